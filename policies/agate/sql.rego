# Command stage, SQL: statements that change the schema, destroy data
# wholesale, or reach outside the database are denied. Each rule looks at
# every statement, so one bad statement denies the whole query string.
#
# Facts per statement (see SqlStatement in src/core/types.ts): kind, node
# (libpg-query node type), tag, reads, writes, functions (lower-case,
# schema-qualified when written so), has_where, copy, text.
package agate

# sql_statement[i] is statement i (from 0) of this command.
sql_statement[i] := st if {
	input.stage == "command"
	some i, st in input.command.sql.statements
}

# where(i, st) says which statement, for reasons: "statement 1: DROP TABLE".
where(i, st) := concat("", ["(statement ", format_int(i + 1, 10), ": ", st.tag, ")"])

violations contains violation(
	"agate.sql.deny_drop", "deny_drop", true,
	concat(" ", ["DROP is not allowed", where(i, st)]),
) if {
	some i, st in sql_statement
	is_drop(st)
}

# DropStmt covers DROP TABLE/VIEW/INDEX/SCHEMA/...; the other Drop*Stmt nodes
# are DROP DATABASE (DropdbStmt), ROLE, OWNED, TABLESPACE, SUBSCRIPTION, ...
is_drop(st) if startswith(st.node, "Drop")

is_drop(st) if startswith(st.tag, "DROP ")

violations contains violation(
	"agate.sql.deny_truncate", "deny_truncate", true,
	concat(" ", ["TRUNCATE is not allowed", where(i, st)]),
) if {
	some i, st in sql_statement
	is_truncate(st)
}

is_truncate(st) if st.node == "TruncateStmt"

is_truncate(st) if startswith(st.tag, "TRUNCATE")

violations contains violation(
	"agate.sql.deny_alter", "deny_alter", true,
	concat(" ", ["ALTER is not allowed", where(i, st)]),
) if {
	some i, st in sql_statement
	is_alter(st)
}

# Every Alter*Stmt node (AlterTableStmt, AlterRoleStmt, AlterSystemStmt, ...)
# and RenameStmt (ALTER ... RENAME TO).
is_alter(st) if {
	startswith(st.node, "Alter")
	endswith(st.node, "Stmt")
}

is_alter(st) if st.node == "RenameStmt"

is_alter(st) if startswith(st.tag, "ALTER ")

violations contains violation(
	"agate.sql.deny_server_function", "deny_server_function", true,
	concat("", ["calling ", fn, "() is not allowed: it reaches outside the database ", where(i, st)]),
) if {
	some i, st in sql_statement
	some fn in st.functions
	server_function(unqualified(fn))
}

# unqualified drops any schema: "pg_catalog.pg_read_file" -> "pg_read_file".
# dblink and adminpack live in whatever schema they were installed into, so
# the schema is ignored rather than matched against pg_catalog only.
unqualified(fn) := name if {
	parts := split(fn, ".")
	name := parts[count(parts) - 1]
}

# Functions that read or write the server's file system, run programs, or
# open connections to other servers.
server_functions := {
	# server files (core)
	"pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_ls_dir",
	"pg_ls_logdir", "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir",
	"pg_ls_logicalsnapdir", "pg_ls_logicalmapdir", "pg_ls_replslotdir",
	"pg_ls_summariesdir",
	# server files (adminpack)
	"pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_logdir_ls",
	# large objects to and from server files
	"lo_import", "lo_export",
}

server_function(name) if name in server_functions

# dblink, dblink_exec, dblink_connect, dblink_connect_u, dblink_send_query, ...
server_function(name) if startswith(name, "dblink")

violations contains violation(
	"agate.sql.deny_copy_program", "deny_copy_program", true,
	concat(" ", ["COPY ... PROGRAM is not allowed: it runs a program on the database server", where(i, st)]),
) if {
	some i, st in sql_statement
	st.kind == "copy"
	st.copy.program == true
}

# COPY must go through the client (STDIN/STDOUT). A COPY without facts is
# treated as a server file: unknown means no.
violations contains violation(
	"agate.sql.deny_copy_file", "deny_copy_file", true,
	concat(" ", ["COPY to or from a server file is not allowed; use STDIN or STDOUT", where(i, st)]),
) if {
	some i, st in sql_statement
	st.kind == "copy"
	not st.copy.program == true
	not st.copy.stdio == true
}

# A PostgreSQL command must come with the analyser's facts; without them no
# rule above could see it, so it is refused rather than waved through.
violations contains violation(
	"agate.sql.deny_unanalysed", "deny_unanalysed", true,
	"the command has no SQL facts (input.command.sql), so it cannot be checked",
) if {
	input.stage == "command"
	input.connection.protocol == "postgres"
	not input.command.sql.statements
}

# Code whose effects the analyser cannot see: a DO block or a function or
# procedure body (which could call pg_read_file where no rule looks), and
# LOAD, which loads a shared library from the server's disk.
violations contains violation(
	"agate.sql.deny_opaque_code", "deny_opaque_code", true,
	concat(" ", ["code the policy cannot inspect is not allowed (DO blocks, function bodies, LOAD)", where(i, st)]),
) if {
	some i, st in sql_statement
	opaque_code(st)
}

opaque_code(st) if st.kind == "do"

opaque_code(st) if st.node in {"DoStmt", "CreateFunctionStmt", "LoadStmt", "CreatePLangStmt"}

# Statements that bind a function to syntax or to events, so that later
# statements call it without naming it: CREATE OPERATOR ### (PROCEDURE =
# pg_read_file) makes `SELECT ### '/etc/passwd'` read a file with no function
# in sight. DefineStmt covers CREATE OPERATOR, AGGREGATE, base TYPE,
# COLLATION and text search objects.
violations contains violation(
	"agate.sql.deny_function_binding", "deny_function_binding", true,
	concat(" ", ["binding functions to operators, casts, aggregates, types or events is not allowed: later statements would call them unseen", where(i, st)]),
) if {
	some i, st in sql_statement
	st.node in function_binding_nodes
}

function_binding_nodes := {
	"DefineStmt", "CreateCastStmt", "CreateConversionStmt", "CreateTransformStmt",
	"CreateEventTrigStmt", "CreateOpClassStmt", "CreateOpFamilyStmt",
}

# Extensions, foreign-data wrappers, foreign servers and tables, and
# tablespaces open paths out of the database: file_fdw reads server files through a plain SELECT,
# postgres_fdw and dblink reach other servers.
violations contains violation(
	"agate.sql.deny_external_access", "deny_external_access", true,
	concat(" ", ["extensions, foreign servers and foreign tables are not allowed: they reach outside the database", where(i, st)]),
) if {
	some i, st in sql_statement
	st.node in external_access_nodes
}

external_access_nodes := {
	"CreateExtensionStmt", "CreateFdwStmt", "CreateForeignServerStmt",
	"CreateForeignTableStmt", "ImportForeignSchemaStmt", "CreateUserMappingStmt",
	# CREATE TABLESPACE ... LOCATION '/dir' writes into the server's file system
	"CreateTableSpaceStmt",
}

# Functions that run SQL handed to them as a string: the statement inside is
# invisible to the analyser, so `SELECT query_to_xml('select
# pg_read_file(...)', ...)` would slip past every other rule.
violations contains violation(
	"agate.sql.deny_dynamic_sql", "deny_dynamic_sql", true,
	concat("", ["calling ", fn, "() is not allowed: it runs SQL given as a string, which no rule can inspect ", where(i, st)]),
) if {
	some i, st in sql_statement
	some fn in st.functions
	dynamic_sql_function(unqualified(fn))
}

dynamic_sql_functions := {
	"query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
	"ts_stat", "connectby",
}

dynamic_sql_function(name) if name in dynamic_sql_functions

# tablefunc's crosstab, crosstab2, crosstab3, crosstab4
dynamic_sql_function(name) if startswith(name, "crosstab")
