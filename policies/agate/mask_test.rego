package agate_test

import data.agate

mask_input(connection) := {
	"stage": "command",
	"identity": {"subject": "alice", "groups": []},
	"connection": {"name": connection, "protocol": "postgres"},
	"command": {"text": "SELECT 1", "sql": {"multi": false, "statements": []}},
}

test_secrets_are_masked_by_default if {
	d := agate.decision with input as mask_input("app")
	d.mask == {"columns": [], "detectors": agate.secret_detectors}
	"jwt" in d.mask.detectors
	not "email" in d.mask.detectors
}

test_global_detectors_replace_the_default if {
	d := agate.decision with input as mask_input("app")
		with data.agate.config.mask as {"detectors": ["*"], "columns": ["public.users.email:hmac"]}
	d.mask == {"columns": ["public.users.email:hmac"], "detectors": ["*"]}
}

test_connection_detectors_replace_global_and_columns_add_up if {
	d := agate.decision with input as mask_input("analytics")
		with data.agate.config as {
			"mask": {"detectors": ["*"], "columns": ["*password*"]},
			"connections": {"analytics": {"mask": {"detectors": [], "columns": ["users.ssn:partial"]}}},
		}
	d.mask == {"columns": ["*password*", "users.ssn:partial"], "detectors": []}
}

test_other_connections_keep_the_global_mask if {
	d := agate.decision with input as mask_input("app")
		with data.agate.config as {
			"mask": {"detectors": ["email"]},
			"connections": {"analytics": {"mask": {"detectors": []}}},
		}
	d.mask == {"columns": [], "detectors": ["email"]}
}

covered_copy_input(st) := {
	"stage": "command",
	"identity": {"subject": "alice", "groups": []},
	"connection": {"name": "app", "protocol": "postgres"},
	"command": {"text": "x", "sql": {"multi": false, "statements": [st]}},
}

covered_copy_stmt := {
	"kind": "insert", "node": "InsertStmt", "tag": "INSERT", "reads": ["users"], "writes": ["sink"],
	"functions": [], "columns": ["email"], "whole_row": false, "settings": [],
	"copies": [{"schema": "public", "table": "users", "column": "email"}, {"schema": "public", "table": "sink", "column": "t"}],
}

test_copying_a_covered_column_is_refused if {
	d := agate.decision with input as covered_copy_input(covered_copy_stmt)
		with data.agate.config.mask as {"columns": ["users.email:hmac"]}
	some r in d.reasons
	startswith(r, "agate.mask.deny_covered_copy: copying masked data is not allowed: it writes values of public.users.email")
	not d.allow
}

test_copying_uncovered_columns_passes if {
	d := agate.decision with input as covered_copy_input(object.union(covered_copy_stmt, {"copies": [{"schema": "public", "table": "users", "column": "name"}]}))
		with data.agate.config.mask as {"columns": ["users.email", "*secret*"]}
	not any_reason_starts(d, "agate.mask.deny_covered_copy")
}

test_set_config_of_a_covered_value_is_refused if {
	st := object.union(covered_copy_stmt, {"kind": "select", "node": "SelectStmt", "tag": "SELECT", "writes": [], "functions": ["set_config"]})
	d := agate.decision with input as covered_copy_input(st) with data.agate.config.mask as {"columns": ["public.users.*"]}
	any_reason_starts(d, "agate.mask.deny_covered_copy")
}

test_a_plain_select_of_a_covered_column_is_no_copy if {
	st := object.union(covered_copy_stmt, {"kind": "select", "node": "SelectStmt", "tag": "SELECT", "writes": []})
	d := agate.decision with input as covered_copy_input(st) with data.agate.config.mask as {"columns": ["email"]}
	not any_reason_starts(d, "agate.mask.deny_covered_copy")
}

test_deny_covered_copy_can_be_switched_off if {
	d := agate.decision with input as covered_copy_input(covered_copy_stmt)
		with data.agate.config as {"mask": {"columns": ["email"]}, "allow_rules": ["deny_covered_copy"]}
	not any_reason_starts(d, "agate.mask.deny_covered_copy")
}

test_opaque_sources_count_under_any_column_rule if {
	st := object.union(covered_copy_stmt, {"copies": [], "sources_opaque": true})
	d := agate.decision with input as covered_copy_input(st) with data.agate.config.mask as {"columns": ["email"]}
	any_reason_starts(d, "agate.mask.deny_covered_copy")
	d2 := agate.decision with input as covered_copy_input(st)
	not any_reason_starts(d2, "agate.mask.deny_covered_copy")
}

test_statistics_are_refused_under_column_rules_whatever_the_allow_rules if {
	st := object.union(covered_copy_stmt, {"kind": "select", "node": "SelectStmt", "tag": "SELECT", "writes": [], "reads": ["pg_catalog.pg_stats"], "copies": []})
	d := agate.decision with input as covered_copy_input(st)
		with data.agate.config as {"mask": {"columns": ["email"]}, "allow_rules": ["deny_covered_statistics", "agate.mask.deny_covered_statistics"]}
	any_reason_starts(d, "agate.mask.deny_covered_statistics")
	d2 := agate.decision with input as covered_copy_input(st)
	not any_reason_starts(d2, "agate.mask.deny_covered_statistics")
}

any_reason_starts(d, prefix) if {
	some r in d.reasons
	startswith(r, prefix)
}

test_a_materialized_view_keeps_its_lineage_and_is_no_copy if {
	mv := object.union(covered_copy_stmt, {"kind": "ddl", "node": "CreateTableAsStmt", "tag": "CREATE MATERIALIZED VIEW", "writes": ["mv"]})
	d := agate.decision with input as covered_copy_input(mv) with data.agate.config.mask as {"columns": ["email"]}
	not any_reason_starts(d, "agate.mask.deny_covered_copy")
	ctas := object.union(mv, {"tag": "CREATE TABLE AS"})
	d2 := agate.decision with input as covered_copy_input(ctas) with data.agate.config.mask as {"columns": ["email"]}
	any_reason_starts(d2, "agate.mask.deny_covered_copy")
}

test_star_patterns_match_like_the_masker if {
	agate.star_match("*secret*", "api_secret")
	agate.star_match("users", "users")
	agate.star_match("pass*", "password")
	agate.star_match("*", "anything")
	not agate.star_match("pass*", "bypass")
	not agate.star_match("ab*ba", "aba")
	not agate.star_match("users", "users2")
}

# A table agate derived a rule for (input.mask.derived) is covered like a configured one:
# copying it on is refused, and the decision's mask carries the rule.
test_a_derived_rule_counts_like_a_configured_one if {
	st := object.union(covered_copy_stmt, {"copies": [{"schema": "public", "table": "sink", "column": "t"}]})
	d := agate.decision with input as object.union(covered_copy_input(st), {"mask": {"derived": ["public.sink.*"]}})
	"public.sink.*" in d.mask.columns
	some r in d.reasons
	startswith(r, "agate.mask.deny_covered_copy: copying masked data is not allowed: it writes values of public.sink.t")
}

test_without_derived_rules_the_copy_of_an_uncovered_table_passes if {
	st := object.union(covered_copy_stmt, {"copies": [{"schema": "public", "table": "sink", "column": "t"}]})
	d := agate.decision with input as covered_copy_input(st)
	not any_copy_reason(d.reasons)
}

any_copy_reason(reasons) if {
	some r in reasons
	startswith(r, "agate.mask.deny_covered_copy")
}

test_a_prepared_covered_copy_is_refused_at_prepare if {
	st := object.union(covered_copy_stmt, {"kind": "prepare", "node": "PrepareStmt", "tag": "PREPARE"})
	d := agate.decision with input as covered_copy_input(st)
		with data.agate.config.mask as {"columns": ["users.email"]}
	some r in d.reasons
	startswith(r, "agate.mask.deny_covered_copy: copying masked data is not allowed: its statement writes values of public.users.email")
}
