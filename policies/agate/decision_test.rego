package agate_test

import data.agate

# Decision shape, stage handling and the escape hatch.

session_input := {
	"stage": "session",
	"now": "2025-01-01T00:00:00Z",
	"identity": {"subject": "alice@example.com", "issuer": "https://idp.example.com", "groups": ["dba"], "kind": "human"},
	"connection": {"name": "prod-db", "protocol": "postgres", "target": "127.0.0.1:5432/app"},
}

# sql_command builds a command-stage input for the given statements on the
# given connection.
sql_command(connection, statements) := {
	"stage": "command",
	"now": "2025-01-01T00:00:00Z",
	"identity": {"subject": "alice@example.com", "issuer": "https://idp.example.com", "groups": [], "kind": "agent"},
	"connection": {"name": connection, "protocol": "postgres", "target": "127.0.0.1:5432/app"},
	"command": {"text": "", "sql": {"statements": statements, "multi": count(statements) > 1, "catalog": {"known": true}}},
}

drop_table := {
	"kind": "ddl", "node": "DropStmt", "tag": "DROP TABLE",
	"reads": [], "writes": ["users"], "functions": [], "text": "DROP TABLE users",
}

truncate_table := {
	"kind": "ddl", "node": "TruncateStmt", "tag": "TRUNCATE TABLE",
	"reads": [], "writes": ["users"], "functions": [], "text": "TRUNCATE users",
}

select_one := {
	"kind": "select", "node": "SelectStmt", "tag": "SELECT",
	"reads": [], "writes": [], "functions": [], "text": "SELECT 1",
}

test_decision_has_the_contract_shape if {
	d := agate.decision with input as session_input
	d == {
		"allow": true,
		"reasons": [],
		"approval": {"required": false, "approvers": [], "timeout_s": 0},
		"mask": {"columns": [], "detectors": agate.secret_detectors},
	}
}

test_denied_decision_keeps_the_shape if {
	d := agate.decision with input as sql_command("prod-db", [drop_table])
	d.allow == false
	count(d.reasons) == 1
	d.approval == {"required": false, "approvers": [], "timeout_s": 0}
	d.mask == {"columns": [], "detectors": agate.secret_detectors}
}

test_missing_stage_is_denied if {
	d := agate.decision with input as {"identity": {"subject": "alice"}}
	d.allow == false
	d.reasons == [`agate.policy.deny_unknown_stage: the input has no stage; expected "session" or "command"`]
}

test_unknown_stage_is_denied if {
	d := agate.decision with input as object.union(session_input, {"stage": "handshake"})
	d.allow == false
	d.reasons == [`agate.policy.deny_unknown_stage: stage "handshake" is unknown; expected "session" or "command"`]
}

test_empty_input_is_denied if {
	d := agate.decision with input as {}
	d.allow == false
}

test_escape_hatch_global_short_name if {
	d := agate.decision with input as sql_command("prod-db", [drop_table])
		with data.agate.config as {"allow_rules": ["deny_drop"]}
	d.allow == true
	d.reasons == []
}

test_escape_hatch_global_full_name if {
	d := agate.decision with input as sql_command("prod-db", [drop_table])
		with data.agate.config as {"allow_rules": ["agate.sql.deny_drop"]}
	d.allow == true
}

test_escape_hatch_only_switches_off_the_named_rule if {
	d := agate.decision with input as sql_command("prod-db", [drop_table, truncate_table])
		with data.agate.config as {"allow_rules": ["deny_drop"]}
	d.allow == false
	d.reasons == ["agate.sql.deny_truncate: TRUNCATE is not allowed (statement 2: TRUNCATE TABLE)"]
}

test_escape_hatch_per_connection if {
	config := {"connections": {"staging-db": {"allow_rules": ["deny_drop"]}}}
	staging := agate.decision with input as sql_command("staging-db", [drop_table])
		with data.agate.config as config
	staging.allow == true
	prod := agate.decision with input as sql_command("prod-db", [drop_table])
		with data.agate.config as config
	prod.allow == false
}

test_escape_hatch_cannot_switch_off_stage_or_identity if {
	config := {"allow_rules": ["deny_unknown_stage", "deny_no_identity", "agate.session.deny_no_identity"]}
	d1 := agate.decision with input as {} with data.agate.config as config
	d1.allow == false
	d2 := agate.decision with input as object.union(session_input, {"identity": {"subject": ""}})
		with data.agate.config as config
	d2.allow == false
}

test_reasons_are_sorted_strings if {
	d := agate.decision with input as sql_command("prod-db", [truncate_table, select_one, drop_table])
	d.reasons == [
		"agate.sql.deny_drop: DROP is not allowed (statement 3: DROP TABLE)",
		"agate.sql.deny_truncate: TRUNCATE is not allowed (statement 1: TRUNCATE TABLE)",
	]
}
