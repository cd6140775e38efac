# agate default policy: entrypoint `agate/decision`.
#
# agate evaluates `data.agate.decision` once when a session opens
# (input.stage == "session") and once per command (input.stage == "command");
# for SQL, once per query string, with every statement's facts in
# input.command.sql.statements. The input and decision shapes are the
# contract in DESIGN.md ("Policy contract"). The decision is always a complete object:
#
#   {"allow": bool, "reasons": ["<rule>: <sentence>", ...],
#    "approval": {"required": false, "approvers": [], "timeout_s": 0},
#    "mask": {"columns": [...], "detectors": [...]}}   (mask.rego)
#
# What the default policy does:
#
#   session  allowed for any verified identity (identity.subject non-empty).
#   command  allowed, unless a rule below denies ANY statement in it:
#              agate.sql.deny_drop             DROP of anything
#              agate.sql.deny_truncate         TRUNCATE
#              agate.sql.deny_alter            ALTER of anything, and RENAME
#              agate.sql.deny_server_function  functions that reach outside the
#                                              database: pg_read_file, pg_ls_dir,
#                                              lo_import, lo_export, dblink*, ...
#              agate.sql.deny_copy_program     COPY ... PROGRAM
#              agate.sql.deny_copy_file        COPY to or from a server file
#              agate.sql.deny_opaque_code      DO blocks, CREATE FUNCTION/PROCEDURE, LOAD:
#                                              code whose effects no rule can see
#              agate.sql.deny_function_binding CREATE OPERATOR/AGGREGATE/CAST/EVENT TRIGGER, base
#                                              types: later statements would call functions unseen
#              agate.sql.deny_external_access  CREATE EXTENSION, foreign data wrappers, servers,
#                                              foreign tables, IMPORT FOREIGN SCHEMA, CREATE TABLESPACE
#              agate.sql.deny_dynamic_sql      functions that run SQL given as a string:
#                                              query_to_xml*, ts_stat, crosstab*, connectby
#              agate.sql.deny_unanalysed       a PostgreSQL command without SQL facts
#            and held for approval (approvals.rego):
#              agate.sql.approve_large_write       a write the planner estimates to touch
#                                                  more than approvals.max_rows rows
#              agate.sql.approve_unestimated_write a write whose estimate could not be made
#   other    a missing or unknown stage is denied (agate.policy.deny_unknown_stage).
#
# Every deny reason starts with the rule's name, so operators can see which
# rule refused a command and switch it off if they mean to.
#
# Escape hatch: switching rules off with data
#
#   The agate.sql.* rules can be allowed, everywhere or per connection, by
#   naming them (short "deny_drop" or full "agate.sql.deny_drop") in data:
#
#     {"agate": {"config": {
#        "allow_rules": ["deny_truncate"],
#        "connections": {"staging-db": {"allow_rules": ["deny_drop", "deny_alter"]}}
#     }}}
#
#   Here TRUNCATE is allowed on every connection, and DROP and ALTER on the
#   connection named "staging-db" (input.connection.name). The session and
#   stage rules cannot be switched off this way. agate passes this document as
#   the `data` of the policy engine.
#
# Writing your own rules: add a file in this package with
#
#   violations contains v if {
#       ...
#       v := violation("agate.mine.deny_x", "deny_x", true, "a sentence")
#   }
#
# and test it beside its file with `opa test`:
#
#   $(bash scripts/opa.sh) test policies/ -v
package agate

default_approval := {"required": false, "approvers": [], "timeout_s": 0}

decision := {
	"allow": allow,
	"reasons": array.concat(reasons, approval_reasons),
	"approval": approval,
	"mask": mask,
}

default allow := false

allow if {
	stage_known
	count(reasons) == 0
}

# reasons are the violations that no escape hatch switched off, sorted so
# that the same input always gives the same decision.
reasons := sort([reason |
	some v in violations
	not switched_off(v)
	reason := concat(": ", [v.rule, v.msg])
])

# violation builds the one shape every rule reports: `rule` is the full name
# shown in reasons, `name` the short one the escape hatch also accepts, and
# `escapable` whether data may switch the rule off.
violation(rule, name, escapable, msg) := {
	"rule": rule,
	"name": name,
	"escapable": escapable,
	"msg": msg,
}

known_stages := {"session", "command"}

stage_known if input.stage in known_stages

violations contains violation(
	"agate.policy.deny_unknown_stage", "deny_unknown_stage", false,
	`the input has no stage; expected "session" or "command"`,
) if not input.stage

violations contains violation(
	"agate.policy.deny_unknown_stage", "deny_unknown_stage", false,
	concat("", ["stage ", json.marshal(input.stage), ` is unknown; expected "session" or "command"`]),
) if {
	input.stage
	not stage_known
}

# allowed_rules: rule names switched off by data, globally or for this connection.
allowed_rules contains name if some name in data.agate.config.allow_rules

allowed_rules contains name if {
	some name in data.agate.config.connections[input.connection.name].allow_rules
}

switched_off(v) if {
	v.escapable
	v.name in allowed_rules
}

switched_off(v) if {
	v.escapable
	v.rule in allowed_rules
}
