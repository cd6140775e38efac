# Command stage: DDL on ordinary objects (CREATE TABLE/INDEX/VIEW/SEQUENCE/
# TYPE/DOMAIN/SCHEMA, ALTER TABLE … ADD COLUMN and other additions, RENAME,
# COMMENT; see ordinary_ddl in sql.rego) is not refused: it waits for a
# person's approval, like the writes in approvals.rego, with the same
# approvers, timeout and grants.
#
#   agate.sql.approve_ddl   a statement, or one inside it, that changes the schema
#
# Temporary tables, views and sequences are application work and need no
# approval. Switch the rule off with allow_rules ("approve_ddl"), e.g. for
# a connection whose migrations run unattended.
package agate

approval_violations contains violation(
	"agate.sql.approve_ddl", "approve_ddl", true,
	concat("", [tag, inside, " changes the schema ", where(i, st)]),
) if {
	some unit in sql_unit_class
	unit[3] == "ddl"
	[i, tag, inside, _] := unit
	st := sql_statement[i]
}
