package agate_test

import data.agate

# Approvals: writes the planner estimates to touch many rows, or that it
# could not estimate, wait for a person.

write(kind, rows) := object.union(stmt(kind, "X", upper(kind)), {"writes": ["users"], "estimated_rows": rows})

test_large_delete_needs_approval_with_defaults if {
	d := agate.decision with input as sql_command("prod-db", [write("delete", 52000)])
	d.allow == true
	d.approval == {"required": true, "approvers": ["dba"], "timeout_s": 300, "min_approvers": 1}
	d.reasons == ["agate.sql.approve_large_write: DELETE is estimated to touch 52000 rows (planner), more than approvals.max_rows 1000 (statement 1: DELETE)"]
}

test_at_the_limit_needs_none if {
	d := agate.decision with input as sql_command("prod-db", [write("update", 1000)])
	d.approval.required == false
	d.reasons == []
}

test_small_targeted_write_needs_none if {
	d := agate.decision with input as sql_command("prod-db", [write("delete", 1)])
	d.approval.required == false
	d.allow == true
}

test_every_write_statement_counts if {
	# A data-modifying CTE in a SELECT, EXPLAIN ANALYZE, an EXECUTE: whatever the kind, the estimate is what counts.
	some kind in ["select", "explain", "execute", "merge", "insert"]
	d := agate.decision with input as sql_command("prod-db", [stmt("select", "SelectStmt", "SELECT"), write(kind, 5000)])
	d.approval.required == true
	d.reasons == [concat("", ["agate.sql.approve_large_write: ", upper(kind), " is estimated to touch 5000 rows (planner), more than approvals.max_rows 1000 (statement 2: ", upper(kind), ")"])]
}

test_unestimated_write_needs_approval if {
	d := agate.decision with input as sql_command("prod-db", [write("update", null)])
	d.approval.required == true
	d.reasons == ["agate.sql.approve_unestimated_write: UPDATE changes rows and its row estimate could not be made (statement 1: UPDATE)"]
}

test_plain_write_without_any_estimate_fails_closed if {
	some kind in ["insert", "update", "delete", "merge"]
	d := agate.decision with input as sql_command("prod-db", [object.union(stmt(kind, "X", upper(kind)), {"writes": ["users"]})])
	d.approval.required == true
	startswith(d.reasons[0], "agate.sql.approve_unestimated_write: ")
}

test_statements_that_write_nothing_need_none if {
	d := agate.decision with input as sql_command("prod-db", [stmt("select", "SelectStmt", "SELECT"), stmt("explain", "ExplainStmt", "EXPLAIN"), stmt("copy", "CopyStmt", "COPY")])
	d.approval.required == false
}

test_max_rows_from_data_and_per_connection if {
	cfg := {"approvals": {"max_rows": 10}, "connections": {"prod-db": {"approvals": {"max_rows": 100000}}}}
	small := agate.decision with input as sql_command("dev-db", [write("delete", 50)]) with data.agate.config as cfg
	small.approval.required == true
	contains(small.reasons[0], "more than approvals.max_rows 10 ")
	large := agate.decision with input as sql_command("prod-db", [write("delete", 50000)]) with data.agate.config as cfg
	large.approval.required == false
}

test_grant_for_this_connection_lifts_it if {
	inp := object.union(sql_command("prod-db", [write("delete", 52000)]), {"grants": [{"id": "grt_1", "connection": "prod-db", "granted_by": ["bob"], "expires_at": "2099-01-01T00:00:00Z", "request": "apr_1"}]})
	d := agate.decision with input as inp
	d.approval.required == false
	d.allow == true
}

test_grant_for_another_connection_does_not if {
	inp := object.union(sql_command("prod-db", [write("delete", 52000)]), {"grants": [{"id": "grt_1", "connection": "staging-db", "granted_by": ["bob"], "expires_at": "2099-01-01T00:00:00Z", "request": "apr_1"}]})
	d := agate.decision with input as inp
	d.approval.required == true
}

test_data_sets_approvers_timeout_and_two_approvers_per_connection if {
	cfg := {"approvals": {"approvers": ["sre"], "timeout_s": 60}, "connections": {"prod-db": {"approvals": {"min_approvers": 2}}}}
	d := agate.decision with input as sql_command("prod-db", [write("delete", 52000)]) with data.agate.config as cfg
	d.approval == {"required": true, "approvers": ["sre"], "timeout_s": 60, "min_approvers": 2}
}

test_switched_off_by_allow_rules if {
	d := agate.decision with input as sql_command("prod-db", [write("delete", 52000)]) with data.agate.config.allow_rules as ["approve_large_write"]
	d.approval.required == false
	d.reasons == []
	e := agate.decision with input as sql_command("prod-db", [write("delete", null)]) with data.agate.config.allow_rules as ["agate.sql.approve_unestimated_write"]
	e.approval.required == false
}

test_a_deny_rule_still_denies if {
	d := agate.decision with input as sql_command("prod-db", [write("delete", 52000), stmt("drop", "DropStmt", "DROP TABLE")])
	d.allow == false
}
