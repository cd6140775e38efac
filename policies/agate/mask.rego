# What agate masks in responses (decision.mask), and in the audit record of
# every command: see README "Masking" for the rule syntax.
#
#   detectors  by default the secret detectors: cloud keys, tokens, JWTs,
#              private keys, passwords in URLs and key=value secrets. Personal
#              data detectors (email, card, iban, ssn, phone, ipv4, ipv6) are
#              switched on by naming them. "*" names every detector, and a
#              ":partial" or ":hmac" suffix picks the style ("email:hmac").
#   columns    none by default. "schema.table.column", "table.column" or a
#              bare column name; "*" matches any run of characters.
#
# From data, for all connections or per connection. A connection's detectors
# replace the global list (an empty list switches detection off there); its
# columns are added to the global ones:
#
#   {"agate": {"config": {
#      "mask": {"detectors": ["*"], "columns": ["public.users.email:hmac", "*password*"]},
#      "connections": {"analytics": {"mask": {"detectors": ["email", "card:partial"]}}}
#   }}}
package agate

secret_detectors := [
	"aws_access_key", "aws_secret_key", "github_token", "gitlab_token", "slack_token",
	"jwt", "pem_private_key", "url_password", "kv_secret",
]

connection_mask := data.agate.config.connections[input.connection.name].mask

mask_detectors := d if {
	d := connection_mask.detectors
} else := d if {
	d := data.agate.config.mask.detectors
} else := secret_detectors

mask_config := c if {
	c := data.agate.config
} else := {}

mask_columns := array.concat(
	object.get(mask_config, ["mask", "columns"], []),
	object.get(mask_config, ["connections", object.get(object.get(input, "connection", {}), "name", ""), "mask", "columns"], []),
)

mask := {"columns": mask_columns, "detectors": mask_detectors}

# ---------------------------------------------------------------------------
# Moving covered data is a decision. A statement whose copies (the base
# columns whose values may flow into what it writes, RETURNING apart,
# resolved through views and partitions by the catalog facts:
# SqlStatement.copies) include a
# column a mask rule covers, and that writes them somewhere else, is refused:
# INSERT, UPDATE, MERGE, CREATE TABLE AS, SELECT INTO, and calls that keep a
# value in session or server state (set_config, pg_notify, large objects,
# setval). A statement that may read anything (sources_opaque: a function
# that runs a query, one that is not built in) counts under any column rule.
# Switch off with allow_rules: ["deny_covered_copy"].

violations contains violation(
	"agate.mask.deny_covered_copy", "deny_covered_copy", true,
	concat("", [
		"copying masked data is not allowed: ", how, " values of ", what,
		", which the mask covers ", where(i, st),
	]),
) if {
	some i, st in sql_statement
	some how in covered_moves(st)
	what := covered_what(st)
}

# The ways a statement moves what it reads.
covered_moves(st) := {m |
	st.kind in {"insert", "update", "merge"}
	m := "it writes"
} | {m |
	st.node in {"CreateTableAsStmt", "SelectStmt"}
	count(st.writes) > 0
	# a materialized view keeps its lineage: agate follows it to its base columns like a view's
	st.tag != "CREATE MATERIALIZED VIEW"
	m := "it stores"
} | {m |
	some fn in st.functions
	state_functions[unqualified(fn)]
	m := concat("", [unqualified(fn), "() keeps"])
}

state_functions := {
	"set_config", "pg_notify", "lo_from_bytea", "lo_put", "lowrite", "setval",
	"lo_import", "pg_logical_emit_message",
}

covered_what(st) := concat(", ", sort(covered)) if {
	covered := {concat(".", [s.schema, s.table, s.column]) |
		some s in object.get(st, "copies", [])
		covered_source(s)
	}
	count(covered) > 0
} else := "any relation (the statement calls a function agate cannot see into)" if {
	object.get(st, "sources_opaque", false) == true
	count(mask_columns) > 0
}

# covered_source(s): some mask column rule covers base column s (rules.ts ruleForColumn).
covered_source(s) if {
	some rule in mask_columns
	parts := split(rule_name(rule), ".")
	count(parts) <= 3
	names := array.slice([s.schema, s.table, s.column], 3 - count(parts), 3)
	every k, p in parts {
		star_match(lower(p), lower(names[k]))
	}
}

# star_match(pattern, name): `*` matches any run of characters. The pieces
# between stars must open and close the name and all appear in it, in a name
# long enough for all; their order is not checked, which can only match more
# (refuse more), never less. (No glob.match: it doubles the wasm bundle.)
star_match(pattern, name) if {
	not contains(pattern, "*")
	pattern == name
}

star_match(pattern, name) if {
	contains(pattern, "*")
	pieces := split(pattern, "*")
	startswith(name, pieces[0])
	endswith(name, pieces[count(pieces) - 1])
	count(name) >= sum([count(x) | some x in pieces])
	every x in pieces {
		contains(name, x)
	}
}

# "users.email:hmac" → "users.email": whatever follows the last ":" is the style.
rule_name(rule) := name if {
	parts := split(rule, ":")
	count(parts) > 1
	name := concat(":", array.slice(parts, 0, count(parts) - 1))
} else := rule

# ---------------------------------------------------------------------------
# Statistics: the planner's statistics hold sample values of every column
# (most common values, histogram bounds). Under any column rule, reading
# them is refused whatever the allow_rules: agate cannot tell which rows of
# the view concern covered tables.

violations contains violation(
	"agate.mask.deny_covered_statistics", "deny_covered_statistics", false,
	concat("", [
		"reading ", unqualified(r), " is not allowed while the mask covers columns: ",
		"planner statistics hold sample values of covered columns ", where(i, st),
	]),
) if {
	count(mask_columns) > 0
	some i, st in sql_statement
	some r in st.reads
	statistics_relations[unqualified(r)]
}

statistics_relations := {"pg_stats", "pg_statistic", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic_ext_data"}
