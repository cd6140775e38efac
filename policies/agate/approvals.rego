# Command stage: writes that would change many rows are not refused: they
# wait for a person's approval (agate holds the command; see README
# "Approvals"). Every statement that changes rows when it runs (INSERT,
# UPDATE, DELETE, MERGE, a data-modifying WITH, EXPLAIN ANALYZE of a write,
# EXECUTE of a prepared write) carries `estimated_rows`: the rows the
# target's own planner estimates it touches, or null when agate could not
# make the estimate.
#
#   agate.sql.approve_large_write        a write estimated to touch more than
#                                        approvals.max_rows rows (default 1000)
#   agate.sql.approve_unestimated_write  a write whose estimate could not be made
#
# The limit, who approves, how long agate waits and how many distinct
# approvers are needed come from data (defaults: 1000 rows, group "dba",
# 300 s, one approver), for all connections or per connection:
#
#   {"agate": {"config": {
#      "approvals": {"max_rows": 1000, "approvers": ["dba"], "timeout_s": 300, "min_approvers": 1},
#      "connections": {"prod-db": {"approvals": {"min_approvers": 2, "max_rows": 100}}}
#   }}}
#
# An approval can leave a grant: a time window in which the same identity's
# commands on the same connection need no new approval. agate passes the
# active ones as input.grants; a grant for this connection lifts the
# requirement. Like the deny rules, each rule can be switched off with
# allow_rules ("approve_large_write", "approve_unestimated_write").
package agate

approval_violations contains violation(
	"agate.sql.approve_large_write", "approve_large_write", true,
	concat(" ", [
		upper(st.kind), "is estimated to touch", format_int(st.estimated_rows, 10),
		"rows (planner), more than approvals.max_rows", format_int(approval_config.max_rows, 10), where(i, st),
	]),
) if {
	some i, st in sql_statement
	is_number(st.estimated_rows)
	st.estimated_rows > approval_config.max_rows
}

approval_violations contains violation(
	"agate.sql.approve_unestimated_write", "approve_unestimated_write", true,
	concat(" ", [upper(st.kind), "changes rows and its row estimate could not be made", where(i, st)]),
) if {
	some i, st in sql_statement
	unestimated_write(st)
}

# A write the planner could not estimate, and, failing closed, a plain write
# that reached the policy without any estimate.
unestimated_write(st) if {
	object.get(st, "estimated_rows", "absent") == null
}

unestimated_write(st) if {
	st.kind in {"insert", "update", "delete", "merge"}
	object.get(st, "estimated_rows", "absent") == "absent"
}

# approval_reasons: why this command needs an approval (empty: it does not).
approval_reasons := [] if granted

approval_reasons := sort([reason |
	some v in approval_violations
	not switched_off(v)
	reason := concat(": ", [v.rule, v.msg])
]) if not granted

granted if {
	some g in input.grants
	g.connection == input.connection.name
}

default approvals_data := {}

approvals_data := data.agate.config.approvals

default connection_approvals_data := {}

connection_approvals_data := data.agate.config.connections[input.connection.name].approvals

approval_config := object.union(
	object.union({"approvers": ["dba"], "timeout_s": 300, "min_approvers": 1, "max_rows": 1000}, approvals_data),
	connection_approvals_data,
)

approval := {
	"required": true,
	"approvers": approval_config.approvers,
	"timeout_s": approval_config.timeout_s,
	"min_approvers": approval_config.min_approvers,
} if count(approval_reasons) > 0

approval := default_approval if count(approval_reasons) == 0
