# Command stage: statements that would change every row of a table (UPDATE
# or DELETE without WHERE) are not refused: they wait for a person's
# approval (agate holds the command; see README "Approvals").
#
#   agate.sql.approve_unbounded_write   UPDATE or DELETE without WHERE
#
# Who approves, how long agate waits and how many distinct approvers are
# needed come from data (defaults: group "dba", 300 s, one approver), for
# all connections or per connection:
#
#   {"agate": {"config": {
#      "approvals": {"approvers": ["dba"], "timeout_s": 300, "min_approvers": 1},
#      "connections": {"prod-db": {"approvals": {"min_approvers": 2}}}
#   }}}
#
# An approval can leave a grant: a time window in which the same identity's
# commands on the same connection need no new approval. agate passes the
# active ones as input.grants; a grant for this connection lifts the
# requirement. Like the deny rules, the rule can be switched off with
# allow_rules ("approve_unbounded_write").
package agate

approval_violations contains violation(
	"agate.sql.approve_unbounded_write", "approve_unbounded_write", true,
	concat(" ", [upper(st.kind), "without WHERE changes every row", where(i, st)]),
) if {
	some i, st in sql_statement
	st.kind in {"update", "delete"}
	st.has_where == false
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
	object.union({"approvers": ["dba"], "timeout_s": 300, "min_approvers": 1}, approvals_data),
	connection_approvals_data,
)

approval := {
	"required": true,
	"approvers": approval_config.approvers,
	"timeout_s": approval_config.timeout_s,
	"min_approvers": approval_config.min_approvers,
} if count(approval_reasons) > 0

approval := default_approval if count(approval_reasons) == 0
