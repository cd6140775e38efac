package agate_test

import data.agate

# Approvals: UPDATE/DELETE without WHERE wait for a person.

unbounded(kind) := object.union(stmt(kind, "X", upper(kind)), {"writes": ["users"], "has_where": false})

test_unbounded_delete_needs_approval_with_defaults if {
	d := agate.decision with input as sql_command("prod-db", [unbounded("delete")])
	d.allow == true
	d.approval == {"required": true, "approvers": ["dba"], "timeout_s": 300, "min_approvers": 1}
	d.reasons == ["agate.sql.approve_unbounded_write: DELETE without WHERE changes every row (statement 1: DELETE)"]
}

test_unbounded_update_needs_approval if {
	d := agate.decision with input as sql_command("prod-db", [unbounded("update")])
	d.approval.required == true
}

test_bounded_write_needs_none if {
	d := agate.decision with input as sql_command("prod-db", [object.union(unbounded("update"), {"has_where": true})])
	d.approval.required == false
	d.reasons == []
}

test_grant_for_this_connection_lifts_it if {
	inp := object.union(sql_command("prod-db", [unbounded("delete")]), {"grants": [{"id": "grt_1", "connection": "prod-db", "granted_by": ["bob"], "expires_at": "2099-01-01T00:00:00Z", "request": "apr_1"}]})
	d := agate.decision with input as inp
	d.approval.required == false
	d.allow == true
}

test_grant_for_another_connection_does_not if {
	inp := object.union(sql_command("prod-db", [unbounded("delete")]), {"grants": [{"id": "grt_1", "connection": "staging-db", "granted_by": ["bob"], "expires_at": "2099-01-01T00:00:00Z", "request": "apr_1"}]})
	d := agate.decision with input as inp
	d.approval.required == true
}

test_data_sets_approvers_timeout_and_two_approvers_per_connection if {
	cfg := {"approvals": {"approvers": ["sre"], "timeout_s": 60}, "connections": {"prod-db": {"approvals": {"min_approvers": 2}}}}
	d := agate.decision with input as sql_command("prod-db", [unbounded("delete")]) with data.agate.config as cfg
	d.approval == {"required": true, "approvers": ["sre"], "timeout_s": 60, "min_approvers": 2}
}

test_switched_off_by_allow_rules if {
	d := agate.decision with input as sql_command("prod-db", [unbounded("delete")]) with data.agate.config.allow_rules as ["approve_unbounded_write"]
	d.approval.required == false
	d.reasons == []
}

test_a_deny_rule_still_denies if {
	d := agate.decision with input as sql_command("prod-db", [unbounded("delete"), stmt("drop", "DropStmt", "DROP TABLE")])
	d.allow == false
}
