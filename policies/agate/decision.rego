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
#   session  allowed for any verified identity (identity.subject non-empty)
#            whose startup settings (input.session.settings) are among those SET
#            may change (agate.session.deny_setting, the allowlist of sql.rego).
#   command  an allowlist (sql.rego): ordinary application work is allowed
#            (queries, data changes, transactions, cursors, PREPARE/EXECUTE,
#            EXPLAIN, COPY STDIN/STDOUT, LISTEN/NOTIFY, SHOW, allowed SETs,
#            LOCK, temporary tables, …), unless a rule denies ANY statement in it.
#            Statements off the allowlist, by what they are:
#              agate.sql.deny_statement        anything not allowed, held or named below
#                                              (CREATE ROLE, GRANT, CREATE RULE, ALTER SYSTEM, …)
#              agate.sql.deny_drop             DROP of schema objects
#              agate.sql.deny_truncate         TRUNCATE
#              agate.sql.deny_alter            ALTER of relations and types beyond additions
#              agate.sql.deny_opaque_code      DO blocks, CREATE/ALTER FUNCTION/PROCEDURE, LOAD:
#                                              code whose effects no rule can see
#              agate.sql.deny_function_binding CREATE OPERATOR/AGGREGATE/CAST/TRIGGER/EVENT TRIGGER,
#                                              base types: later statements would call functions unseen
#              agate.sql.deny_external_access  extensions, foreign data wrappers, servers, tables,
#                                              user mappings, subscriptions, tablespaces
#            On the facts (the target's catalog's included), in any statement:
#              agate.sql.deny_catalog_write    writes to pg_catalog, information_schema, pg_toast
#              agate.sql.deny_privileged_function  functions PUBLIC may not execute
#              agate.sql.deny_security_definer SECURITY DEFINER functions
#              agate.sql.deny_untrusted_function   user functions in untrusted languages, not from an extension
#              agate.sql.deny_unknown_function functions the catalog does not have
#              agate.sql.deny_server_function  functions that reach outside the database or act on
#                                              the server or other sessions: pg_read_file, lo_export,
#                                              dblink*, pg_terminate_backend, pg_reload_conf, ...
#              agate.sql.deny_dynamic_sql      functions that run SQL given as a string or read tables
#                                              by name: query_to_xml*, table_to_xml*, ts_rewrite, ts_stat, ...
#              agate.sql.deny_server_config    pg_settings, pg_hba_file_rules, pg_authid, pg_stat_activity,
#                                              pg_stats, ..., SHOW ALL, superuser-only settings
#              agate.sql.deny_setting          SET/set_config of settings outside the allowlist
#                                              (data.agate.config.allow_settings extends it)
#              agate.sql.deny_copy_program     COPY ... PROGRAM
#              agate.sql.deny_copy_file        COPY to or from a server file
#              agate.sql.deny_catalog_unknown  the target's catalog could not be asked
#              agate.sql.deny_unanalysed       a PostgreSQL command without SQL facts
#              agate.mask.deny_covered_copy    writing a covered column's values elsewhere (mask.rego)
#              agate.mask.deny_covered_statistics  pg_stats & co. under column rules (not switchable)
#            and held for approval:
#              agate.sql.approve_ddl           CREATE TABLE/INDEX/VIEW/..., ALTER TABLE ... ADD COLUMN (ddl.rego)
#              agate.sql.approve_large_write   a write the planner estimates to touch more than
#                                              approvals.max_rows rows (approvals.rego)
#              agate.sql.approve_unestimated_write a write whose estimate could not be made (approvals.rego)
#   other    a missing or unknown stage is denied (agate.policy.deny_unknown_stage).
#
# Every deny reason starts with the rule's name, so operators can see which
# rule refused a command and switch it off if they mean to.
#
# Escape hatch: switching rules off with data
#
#   Every agate.sql.* rule (deny and approve), and agate.mask.deny_covered_copy, can be switched off, everywhere
#   or per connection, by naming it (short "deny_drop" or full
#   "agate.sql.deny_drop") in data:
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
