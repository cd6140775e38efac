package agate_test

import data.agate

# Command stage, SQL rules: one test per allow and deny.

stmt(kind, node, tag) := {
	"kind": kind, "node": node, "tag": tag,
	"reads": [], "writes": [], "functions": [], "text": tag,
}

with_functions(st, fns) := object.union(st, {"functions": fns})

copy_stmt(direction, program, file, stdio) := object.union(stmt("copy", "CopyStmt", "COPY"), {"copy": {
	"direction": direction, "program": program, "file": file, "stdio": stdio,
}})

allowed(statements) if {
	d := agate.decision with input as sql_command("prod-db", statements)
	d.allow == true
	d.reasons == []
}

denied_by(statements, rule) if {
	d := agate.decision with input as sql_command("prod-db", statements)
	d.allow == false
	some r in d.reasons
	startswith(r, concat("", [rule, ": "]))
}

test_reads_and_writes_allowed if {
	allowed([object.union(stmt("select", "SelectStmt", "SELECT"), {"reads": ["public.users"]})])
	allowed([object.union(stmt("insert", "InsertStmt", "INSERT"), {"writes": ["users"], "estimated_rows": 1})])
	allowed([object.union(stmt("update", "UpdateStmt", "UPDATE"), {"writes": ["users"], "has_where": true, "estimated_rows": 1})])
	allowed([object.union(stmt("delete", "DeleteStmt", "DELETE"), {"writes": ["users"], "has_where": true, "estimated_rows": 1})])
	allowed([object.union(stmt("merge", "MergeStmt", "MERGE"), {"estimated_rows": 1})])
}

test_utility_statements_allowed if {
	allowed([stmt("transaction", "TransactionStmt", "BEGIN")])
	allowed([stmt("set", "VariableSetStmt", "SET")])
	allowed([stmt("show", "VariableShowStmt", "SHOW")])
	allowed([stmt("explain", "ExplainStmt", "EXPLAIN")])
	allowed([stmt("prepare", "PrepareStmt", "PREPARE")])
	allowed([stmt("execute", "ExecuteStmt", "EXECUTE")])
	allowed([stmt("call", "CallStmt", "CALL")])
	allowed([stmt("utility", "VacuumStmt", "VACUUM")])
}

test_create_allowed if {
	allowed([stmt("ddl", "CreateStmt", "CREATE TABLE")])
	allowed([stmt("ddl", "IndexStmt", "CREATE INDEX")])
	allowed([stmt("ddl", "ViewStmt", "CREATE VIEW")])
}

test_empty_statement_list_allowed if {
	allowed([])
}

test_ordinary_functions_allowed if {
	allowed([with_functions(stmt("select", "SelectStmt", "SELECT"), ["now", "pg_catalog.lower", "count", "pg_read_file_wrapper"])])
}

test_drop_denied if {
	d := agate.decision with input as sql_command("prod-db", [drop_table])
	d.allow == false
	d.reasons == ["agate.sql.deny_drop: DROP is not allowed (statement 1: DROP TABLE)"]
}

test_every_drop_node_denied if {
	denied_by([stmt("ddl", "DropStmt", "DROP INDEX")], "agate.sql.deny_drop")
	denied_by([stmt("ddl", "DropdbStmt", "DROP DATABASE")], "agate.sql.deny_drop")
	denied_by([stmt("ddl", "DropRoleStmt", "DROP ROLE")], "agate.sql.deny_drop")
	denied_by([stmt("ddl", "DropOwnedStmt", "DROP OWNED")], "agate.sql.deny_drop")
}

test_truncate_denied if {
	denied_by([truncate_table], "agate.sql.deny_truncate")
}

test_alter_denied if {
	denied_by([stmt("ddl", "AlterTableStmt", "ALTER TABLE")], "agate.sql.deny_alter")
	denied_by([stmt("ddl", "AlterRoleStmt", "ALTER ROLE")], "agate.sql.deny_alter")
	denied_by([stmt("utility", "AlterSystemStmt", "ALTER SYSTEM")], "agate.sql.deny_alter")
	denied_by([stmt("ddl", "RenameStmt", "ALTER TABLE")], "agate.sql.deny_alter")
}

test_server_functions_denied if {
	sel := stmt("select", "SelectStmt", "SELECT")
	denied_by([with_functions(sel, ["pg_read_file"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_catalog.pg_read_file"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_read_binary_file"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_ls_dir"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_stat_file"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["lo_import"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_catalog.lo_export"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["dblink"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["public.dblink_exec"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["dblink_connect"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_file_write"])], "agate.sql.deny_server_function")
}

test_server_function_reason_names_the_function if {
	d := agate.decision with input as sql_command("prod-db", [with_functions(stmt("select", "SelectStmt", "SELECT"), ["now", "pg_catalog.pg_read_file"])])
	d.reasons == ["agate.sql.deny_server_function: calling pg_catalog.pg_read_file() is not allowed: it reaches outside the database (statement 1: SELECT)"]
}

test_copy_stdio_allowed if {
	allowed([copy_stmt("from", false, false, true)])
	allowed([copy_stmt("to", false, false, true)])
}

test_copy_program_denied if {
	denied_by([copy_stmt("to", true, false, false)], "agate.sql.deny_copy_program")
	denied_by([copy_stmt("from", true, false, false)], "agate.sql.deny_copy_program")
}

test_copy_program_reports_one_reason if {
	d := agate.decision with input as sql_command("prod-db", [copy_stmt("from", true, false, false)])
	count(d.reasons) == 1
}

test_copy_server_file_denied if {
	denied_by([copy_stmt("to", false, true, false)], "agate.sql.deny_copy_file")
	denied_by([copy_stmt("from", false, true, false)], "agate.sql.deny_copy_file")
}

test_copy_without_facts_denied if {
	denied_by([stmt("copy", "CopyStmt", "COPY")], "agate.sql.deny_copy_file")
}

test_multi_statement_with_one_drop_denied if {
	sel := stmt("select", "SelectStmt", "SELECT")
	d := agate.decision with input as sql_command("prod-db", [sel, sel, drop_table])
	d.allow == false
	d.reasons == ["agate.sql.deny_drop: DROP is not allowed (statement 3: DROP TABLE)"]
}

test_multi_statement_all_reasons if {
	d := agate.decision with input as sql_command("prod-db", [drop_table, stmt("ddl", "AlterTableStmt", "ALTER TABLE"), copy_stmt("to", true, false, false)])
	count(d.reasons) == 3
}

test_postgres_command_without_sql_facts_denied if {
	d := agate.decision with input as object.remove(sql_command("prod-db", []), ["command"])
	d.allow == false
	d.reasons == ["agate.sql.deny_unanalysed: the command has no SQL facts (input.command.sql), so it cannot be checked"]
}

test_non_sql_command_allowed if {
	d := agate.decision with input as {
		"stage": "command",
		"identity": {"subject": "alice"},
		"connection": {"name": "bastion", "protocol": "ssh", "target": "10.0.0.1:22"},
		"command": {"text": "uptime", "exec": {"command": "uptime"}},
	}
	d.allow == true
}

test_opaque_code_denied if {
	denied_by([stmt("do", "DoStmt", "DO")], "agate.sql.deny_opaque_code")
	denied_by([stmt("ddl", "CreateFunctionStmt", "CREATE FUNCTION")], "agate.sql.deny_opaque_code")
	denied_by([stmt("utility", "LoadStmt", "LOAD")], "agate.sql.deny_opaque_code")
}

test_opaque_code_can_be_allowed if {
	d := agate.decision with input as sql_command("prod-db", [stmt("do", "DoStmt", "DO")])
		with data.agate.config.allow_rules as ["deny_opaque_code"]
	d.allow == true
}

test_function_binding_denied if {
	denied_by([stmt("ddl", "DefineStmt", "CREATE OPERATOR")], "agate.sql.deny_function_binding")
	denied_by([stmt("ddl", "DefineStmt", "CREATE AGGREGATE")], "agate.sql.deny_function_binding")
	denied_by([stmt("ddl", "CreateCastStmt", "CREATE CAST")], "agate.sql.deny_function_binding")
	denied_by([stmt("ddl", "CreateEventTrigStmt", "CREATE EVENT TRIGGER")], "agate.sql.deny_function_binding")
	allowed([stmt("ddl", "CompositeTypeStmt", "CREATE TYPE")])
	allowed([stmt("ddl", "CreateStmt", "CREATE TABLE")])
}

test_external_access_denied if {
	denied_by([stmt("ddl", "CreateExtensionStmt", "CREATE EXTENSION")], "agate.sql.deny_external_access")
	denied_by([stmt("ddl", "CreateForeignServerStmt", "CREATE SERVER")], "agate.sql.deny_external_access")
	denied_by([stmt("ddl", "CreateForeignTableStmt", "CREATE FOREIGN TABLE")], "agate.sql.deny_external_access")
	denied_by([stmt("ddl", "ImportForeignSchemaStmt", "IMPORT FOREIGN SCHEMA")], "agate.sql.deny_external_access")
	denied_by([stmt("ddl", "CreateTableSpaceStmt", "CREATE TABLESPACE")], "agate.sql.deny_external_access")
}

test_dynamic_sql_denied if {
	denied_by([with_functions(stmt("select", "SelectStmt", "SELECT"), ["query_to_xml"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(stmt("select", "SelectStmt", "SELECT"), ["pg_catalog.ts_stat"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(stmt("select", "SelectStmt", "SELECT"), ["public.crosstab3"])], "agate.sql.deny_dynamic_sql")
	allowed([with_functions(stmt("select", "SelectStmt", "SELECT"), ["table_to_xml_ish", "xmlelement"])])
}
