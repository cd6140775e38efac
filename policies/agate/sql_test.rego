package agate_test

import data.agate

# Command stage, SQL rules: one test per allow and deny.

stmt(kind, node, tag) := {
	"kind": kind, "node": node, "tag": tag,
	"reads": [], "writes": [], "functions": [], "settings": [], "text": tag,
}

sel := stmt("select", "SelectStmt", "SELECT")

with_functions(st, fns) := object.union(st, {"functions": fns})

# A catalog candidate of a built-in function PUBLIC may execute, changed by `fields`.
call(name, fields) := object.union(
	{
		"name": name, "found": true, "schema": "pg_catalog", "kind": "function", "public": true,
		"volatility": "volatile", "language": "internal", "trusted": false,
		"security_definer": false, "builtin": true, "extension": null,
	},
	fields,
)

with_calls(st, calls) := object.union(st, {"functions": [c.name | some c in calls], "calls": calls})

rel(name, access, schema) := {
	"name": name, "access": access, "found": true, "schema": schema, "kind": "table",
	"catalog": schema in {"pg_catalog", "information_schema"},
}

setting(name, action, call) := {"name": name, "action": action, "local": false, "call": call, "context": "user"}

with_settings(st, settings) := object.union(st, {"settings": settings})

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

held_by(statements, rule) if {
	d := agate.decision with input as sql_command("prod-db", statements)
	d.allow == true
	d.approval.required == true
	some r in d.reasons
	startswith(r, concat("", [rule, ": "]))
}

# --- the allowlist: application work

test_reads_and_writes_allowed if {
	allowed([object.union(sel, {"reads": ["public.users"], "relations": [rel("public.users", "read", "public")]})])
	allowed([object.union(stmt("insert", "InsertStmt", "INSERT"), {"writes": ["users"], "relations": [rel("users", "write", "public")], "estimated_rows": 1})])
	allowed([object.union(stmt("update", "UpdateStmt", "UPDATE"), {"writes": ["users"], "has_where": true, "estimated_rows": 1})])
	allowed([object.union(stmt("delete", "DeleteStmt", "DELETE"), {"writes": ["users"], "has_where": true, "estimated_rows": 1})])
	allowed([object.union(stmt("merge", "MergeStmt", "MERGE"), {"estimated_rows": 1})])
}

test_catalog_reads_allowed if {
	allowed([object.union(sel, {"reads": ["pg_class"], "relations": [rel("pg_class", "read", "pg_catalog")]})])
	allowed([object.union(sel, {"reads": ["information_schema.tables"]})])
}

test_session_and_utility_statements_allowed if {
	allowed([stmt("transaction", "TransactionStmt", "BEGIN")])
	allowed([stmt("transaction", "TransactionStmt", "COMMIT")])
	allowed([stmt("transaction", "TransactionStmt", "SAVEPOINT")])
	allowed([with_settings(stmt("set", "VariableSetStmt", "SET"), [setting("application_name", "set", false)])])
	allowed([with_settings(stmt("show", "VariableShowStmt", "SHOW"), [setting("search_path", "show", false)])])
	allowed([object.union(stmt("explain", "ExplainStmt", "EXPLAIN"), {"inner": [stmt("select", "SelectStmt", "SELECT")]})])
	allowed([object.union(stmt("prepare", "PrepareStmt", "PREPARE"), {"inner": [stmt("delete", "DeleteStmt", "DELETE")]})])
	allowed([stmt("execute", "ExecuteStmt", "EXECUTE")])
	allowed([stmt("utility", "DeallocateStmt", "DEALLOCATE")])
	allowed([object.union(stmt("utility", "DeclareCursorStmt", "DECLARE CURSOR"), {"inner": [sel]})])
	allowed([stmt("utility", "FetchStmt", "FETCH")])
	allowed([stmt("utility", "FetchStmt", "MOVE")])
	allowed([stmt("utility", "ClosePortalStmt", "CLOSE CURSOR")])
	allowed([stmt("call", "CallStmt", "CALL")])
	allowed([stmt("utility", "VacuumStmt", "VACUUM")])
	allowed([stmt("utility", "ListenStmt", "LISTEN")])
	allowed([stmt("utility", "NotifyStmt", "NOTIFY")])
	allowed([stmt("utility", "UnlistenStmt", "UNLISTEN")])
	allowed([stmt("utility", "LockStmt", "LOCK TABLE")])
	allowed([stmt("utility", "DiscardStmt", "DISCARD ALL")])
	allowed([stmt("utility", "ConstraintsSetStmt", "SET CONSTRAINTS")])
}

test_temporary_objects_allowed if {
	allowed([object.union(stmt("ddl", "CreateStmt", "CREATE TABLE"), {"temp": true})])
	allowed([object.union(stmt("ddl", "CreateTableAsStmt", "CREATE TABLE AS"), {"temp": true})])
	allowed([object.union(stmt("ddl", "SelectStmt", "SELECT INTO"), {"temp": true})])
	allowed([object.union(stmt("ddl", "ViewStmt", "CREATE VIEW"), {"temp": true})])
}

test_empty_statement_list_allowed if {
	allowed([])
}

test_ordinary_functions_allowed if {
	allowed([with_calls(sel, [call("now", {}), call("pg_catalog.lower", {}), call("count", {"kind": "aggregate"})])])

	# user-defined, PUBLIC may execute, trusted language
	allowed([with_calls(sel, [call("app_fn", {"schema": "public", "builtin": false, "language": "plpgsql", "trusted": true})])])

	# user-defined C from an extension
	allowed([with_calls(sel, [call("crypt", {"schema": "public", "builtin": false, "language": "c", "extension": "pgcrypto"})])])

	# a function-style cast: no function, but a type of that name
	allowed([with_calls(sel, [{"name": "uuid", "found": false, "type": true, "schema": null}])])
}

# --- DDL: held for approval

test_ordinary_ddl_held_for_approval if {
	held_by([stmt("ddl", "CreateStmt", "CREATE TABLE")], "agate.sql.approve_ddl")
	held_by([stmt("ddl", "IndexStmt", "CREATE INDEX")], "agate.sql.approve_ddl")
	held_by([stmt("ddl", "ViewStmt", "CREATE VIEW")], "agate.sql.approve_ddl")
	held_by([stmt("ddl", "CreateSeqStmt", "CREATE SEQUENCE")], "agate.sql.approve_ddl")
	held_by([stmt("ddl", "CreateEnumStmt", "CREATE TYPE")], "agate.sql.approve_ddl")
	held_by([stmt("ddl", "SelectStmt", "SELECT INTO")], "agate.sql.approve_ddl")
	held_by([object.union(stmt("ddl", "AlterTableStmt", "ALTER TABLE"), {"subcommands": ["AT_AddColumn", "AT_AddConstraint"]})], "agate.sql.approve_ddl")
	held_by([stmt("ddl", "RenameStmt", "ALTER TABLE")], "agate.sql.approve_ddl")
}

test_approve_ddl_reason if {
	d := agate.decision with input as sql_command("prod-db", [stmt("ddl", "CreateStmt", "CREATE TABLE")])
	d.reasons == ["agate.sql.approve_ddl: CREATE TABLE changes the schema (statement 1: CREATE TABLE)"]
}

test_approve_ddl_can_be_switched_off if {
	d := agate.decision with input as sql_command("prod-db", [stmt("ddl", "CreateStmt", "CREATE TABLE")])
		with data.agate.config.allow_rules as ["approve_ddl"]
	d.allow == true
	d.approval.required == false
}

test_explain_of_ddl_held if {
	held_by([object.union(stmt("explain", "ExplainStmt", "EXPLAIN"), {"inner": [stmt("ddl", "CreateTableAsStmt", "CREATE TABLE AS")]})], "agate.sql.approve_ddl")
}

# --- everything else: denied, by name

test_other_statements_denied if {
	denied_by([stmt("ddl", "CreateRoleStmt", "CREATE ROLE")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "AlterRoleStmt", "ALTER ROLE")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "GrantStmt", "GRANT")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "GrantRoleStmt", "GRANT ROLE")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "RuleStmt", "CREATE RULE")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "CreatePolicyStmt", "CREATE POLICY")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "AlterSystemStmt", "ALTER SYSTEM")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "CreatedbStmt", "CREATE DATABASE")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "DropdbStmt", "DROP DATABASE")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "DropRoleStmt", "DROP ROLE")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "AlterOwnerStmt", "ALTER TABLE")], "agate.sql.deny_statement")
	denied_by([stmt("utility", "CheckPointStmt", "CHECKPOINT")], "agate.sql.deny_statement")
	denied_by([stmt("transaction", "TransactionStmt", "PREPARE TRANSACTION")], "agate.sql.deny_statement")
	denied_by([stmt("transaction", "TransactionStmt", "COMMIT PREPARED")], "agate.sql.deny_statement")
	denied_by([stmt("utility", "SomethingNewStmt", "SOMETHING NEW")], "agate.sql.deny_statement")
}

test_deny_statement_reason if {
	d := agate.decision with input as sql_command("prod-db", [stmt("ddl", "CreateRoleStmt", "CREATE ROLE")])
	d.reasons == ["agate.sql.deny_statement: CREATE ROLE is not an allowed statement (statement 1: CREATE ROLE)"]
}

test_statement_inside_another_is_judged if {
	schema := object.union(stmt("ddl", "CreateSchemaStmt", "CREATE SCHEMA"), {"inner": [stmt("ddl", "CreateStmt", "CREATE TABLE"), stmt("ddl", "GrantStmt", "GRANT")]})
	d := agate.decision with input as sql_command("prod-db", [schema])
	d.allow == false
	"agate.sql.deny_statement: GRANT (inside CREATE SCHEMA) is not an allowed statement (statement 1: CREATE SCHEMA)" in d.reasons
}

test_drop_denied if {
	d := agate.decision with input as sql_command("prod-db", [drop_table])
	d.allow == false
	d.reasons == ["agate.sql.deny_drop: DROP is not allowed (statement 1: DROP TABLE)"]
}

test_truncate_denied if {
	denied_by([truncate_table], "agate.sql.deny_truncate")
}

test_alter_beyond_additions_denied if {
	denied_by([object.union(stmt("ddl", "AlterTableStmt", "ALTER TABLE"), {"subcommands": ["AT_AddColumn", "AT_DropColumn"]})], "agate.sql.deny_alter")
	denied_by([object.union(stmt("ddl", "AlterTableStmt", "ALTER TABLE"), {"subcommands": ["AT_DisableTrig"]})], "agate.sql.deny_alter")
	denied_by([object.union(stmt("ddl", "AlterTableStmt", "ALTER TABLE"), {"subcommands": ["AT_ChangeOwner"]})], "agate.sql.deny_alter")
	denied_by([stmt("ddl", "AlterTableStmt", "ALTER TABLE")], "agate.sql.deny_alter")
	denied_by([stmt("ddl", "AlterObjectSchemaStmt", "ALTER TABLE")], "agate.sql.deny_alter")
}

test_alter_of_other_objects_denied_as_statements if {
	denied_by([stmt("ddl", "RenameStmt", "ALTER ROLE")], "agate.sql.deny_statement")
	denied_by([stmt("ddl", "RenameStmt", "ALTER DATABASE")], "agate.sql.deny_statement")
}

test_opaque_code_denied if {
	denied_by([stmt("do", "DoStmt", "DO")], "agate.sql.deny_opaque_code")
	denied_by([stmt("ddl", "CreateFunctionStmt", "CREATE FUNCTION")], "agate.sql.deny_opaque_code")
	denied_by([stmt("ddl", "AlterFunctionStmt", "ALTER FUNCTION")], "agate.sql.deny_opaque_code")
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
	denied_by([stmt("ddl", "CreateTrigStmt", "CREATE TRIGGER")], "agate.sql.deny_function_binding")
	held_by([stmt("ddl", "CompositeTypeStmt", "CREATE TYPE")], "agate.sql.approve_ddl")
}

test_external_access_denied if {
	denied_by([stmt("ddl", "CreateExtensionStmt", "CREATE EXTENSION")], "agate.sql.deny_external_access")
	denied_by([stmt("ddl", "CreateForeignServerStmt", "CREATE SERVER")], "agate.sql.deny_external_access")
	denied_by([stmt("ddl", "CreateForeignTableStmt", "CREATE FOREIGN TABLE")], "agate.sql.deny_external_access")
	denied_by([stmt("ddl", "ImportForeignSchemaStmt", "IMPORT FOREIGN SCHEMA")], "agate.sql.deny_external_access")
	denied_by([stmt("ddl", "CreateTableSpaceStmt", "CREATE TABLESPACE")], "agate.sql.deny_external_access")
	denied_by([stmt("ddl", "CreateSubscriptionStmt", "CREATE SUBSCRIPTION")], "agate.sql.deny_external_access")
}

test_every_statement_rule_switches_off_alone if {
	d := agate.decision with input as sql_command("prod-db", [stmt("ddl", "CreateRoleStmt", "CREATE ROLE")])
		with data.agate.config.allow_rules as ["agate.sql.deny_statement"]
	d.allow == true
}

# --- rules on catalog facts

test_catalog_write_denied if {
	upd := object.union(stmt("update", "UpdateStmt", "UPDATE"), {"writes": ["pg_class"], "has_where": true, "relations": [rel("pg_class", "write", "pg_catalog")]})
	denied_by([upd], "agate.sql.deny_catalog_write")

	# named in a catalog schema, with or without catalog facts
	denied_by([object.union(stmt("delete", "DeleteStmt", "DELETE"), {"writes": ["pg_catalog.pg_authid"], "has_where": true})], "agate.sql.deny_catalog_write")
	denied_by([object.union(copy_stmt("from", false, false, true), {"writes": ["information_schema.sql_features"]})], "agate.sql.deny_catalog_write")
	denied_by([object.union(stmt("utility", "LockStmt", "LOCK TABLE"), {"reads": ["pg_authid"], "relations": [rel("pg_authid", "read", "pg_catalog")]})], "agate.sql.deny_catalog_write")
}

test_catalog_write_reason if {
	upd := object.union(stmt("update", "UpdateStmt", "UPDATE"), {"writes": ["pg_class"], "has_where": true, "estimated_rows": 1, "relations": [rel("pg_class", "write", "pg_catalog")]})
	d := agate.decision with input as sql_command("prod-db", [upd])
	d.reasons == ["agate.sql.deny_catalog_write: writing to the system catalog (pg_catalog.pg_class) is not allowed (statement 1: UPDATE)"]
}

test_catalog_unknown_denied if {
	inp := json.patch(sql_command("prod-db", [with_functions(sel, ["now"])]), [{"op": "replace", "path": "/command/sql/catalog", "value": {"known": false, "error": "connection refused"}}])
	d := agate.decision with input as inp
	d.allow == false
	d.reasons == ["agate.sql.deny_catalog_unknown: the target's catalog could not be asked about the functions and relations it names (connection refused), so it cannot be checked (statement 1: SELECT)"]

	# without catalog facts at all
	inp2 := json.patch(sql_command("prod-db", [object.union(sel, {"reads": ["users"]})]), [{"op": "remove", "path": "/command/sql/catalog"}])
	d2 := agate.decision with input as inp2
	d2.allow == false

	# a statement that names nothing needs no catalog
	inp3 := json.patch(sql_command("prod-db", [stmt("transaction", "TransactionStmt", "BEGIN")]), [{"op": "remove", "path": "/command/sql/catalog"}])
	d3 := agate.decision with input as inp3
	d3.allow == true
}

test_privileged_function_denied if {
	denied_by([with_calls(sel, [call("pg_stat_reset", {"public": false})])], "agate.sql.deny_privileged_function")

	# any candidate of an overloaded name
	denied_by([with_calls(sel, [call("f", {"schema": "public", "builtin": false, "trusted": true}), call("f", {"schema": "admin", "builtin": false, "trusted": true, "public": false})])], "agate.sql.deny_privileged_function")
}

test_security_definer_denied if {
	denied_by([with_calls(sel, [call("f", {"schema": "public", "builtin": false, "trusted": true, "language": "plpgsql", "security_definer": true})])], "agate.sql.deny_security_definer")
}

test_untrusted_user_function_denied if {
	denied_by([with_calls(sel, [call("sys", {"schema": "public", "builtin": false, "language": "c"})])], "agate.sql.deny_untrusted_function")
}

test_unknown_function_denied if {
	denied_by([with_calls(sel, [{"name": "nosuch", "found": false, "type": false, "schema": null}])], "agate.sql.deny_unknown_function")

	# EXTRACT, on a server older than the parser's grammar
	allowed([with_calls(sel, [{"name": "pg_catalog.extract", "found": false, "type": false, "schema": "pg_catalog"}])])
}

test_server_functions_denied if {
	denied_by([with_functions(sel, ["pg_read_file"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_catalog.pg_read_file"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_read_binary_file"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_ls_dir"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["lo_import"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_catalog.lo_export"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["dblink"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["public.dblink_exec"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_file_write"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_terminate_backend"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_cancel_backend"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_reload_conf"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_logical_slot_get_changes"])], "agate.sql.deny_server_function")
	denied_by([with_functions(sel, ["pg_replication_origin_create"])], "agate.sql.deny_server_function")
}

test_server_function_found_through_catalog_schema if {
	# written unqualified under another name's spelling: the candidate's schema.name counts
	denied_by([with_calls(sel, [call("PG_READ_FILE", {"public": true})])], "agate.sql.deny_server_function")
}

test_server_function_reason_names_the_function if {
	d := agate.decision with input as sql_command("prod-db", [with_functions(sel, ["now", "pg_catalog.pg_read_file"])])
	d.reasons == ["agate.sql.deny_server_function: calling pg_catalog.pg_read_file() is not allowed: it reaches outside the database or acts on the server or other sessions (statement 1: SELECT)"]
}

test_dynamic_sql_denied if {
	denied_by([with_functions(sel, ["query_to_xml"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(sel, ["table_to_xml"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(sel, ["schema_to_xmlschema"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(sel, ["database_to_xml_and_xmlschema"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(sel, ["cursor_to_xml"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(sel, ["ts_rewrite"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(sel, ["pg_catalog.ts_stat"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(sel, ["public.crosstab3"])], "agate.sql.deny_dynamic_sql")
	denied_by([with_functions(sel, ["cron.schedule"])], "agate.sql.deny_dynamic_sql")
	allowed([with_functions(sel, ["table_to_xml_ish", "xmlelement", "schedule"])])
}

test_server_config_reads_denied if {
	denied_by([object.union(sel, {"reads": ["pg_settings"]})], "agate.sql.deny_server_config")
	denied_by([object.union(sel, {"reads": ["pg_catalog.pg_hba_file_rules"]})], "agate.sql.deny_server_config")
	denied_by([object.union(sel, {"reads": ["pg_authid"]})], "agate.sql.deny_server_config")
	denied_by([object.union(sel, {"reads": ["pg_stat_activity"]})], "agate.sql.deny_server_config")
	denied_by([object.union(sel, {"reads": ["pg_stats"]})], "agate.sql.deny_server_config")
	denied_by([with_functions(sel, ["pg_show_all_settings"])], "agate.sql.deny_server_config")
	denied_by([with_settings(stmt("show", "VariableShowStmt", "SHOW"), [setting("all", "show", false)])], "agate.sql.deny_server_config")
	denied_by([with_settings(stmt("show", "VariableShowStmt", "SHOW"), [setting("data_directory", "show", false)])], "agate.sql.deny_server_config")
	denied_by([with_settings(sel, [setting("hba_file", "show", true)])], "agate.sql.deny_server_config")
	denied_by([with_settings(sel, [setting(null, "show", true)])], "agate.sql.deny_server_config")
	allowed([object.union(sel, {"reads": ["pg_roles", "pg_class"]})])
}

test_settings_outside_the_allowlist_denied if {
	set_stmt := stmt("set", "VariableSetStmt", "SET")
	denied_by([with_settings(set_stmt, [setting("log_statement", "set", false)])], "agate.sql.deny_setting")
	denied_by([with_settings(set_stmt, [setting("role", "set", false)])], "agate.sql.deny_setting")
	denied_by([with_settings(set_stmt, [setting("session_authorization", "set", false)])], "agate.sql.deny_setting")
	denied_by([with_settings(set_stmt, [setting("session_replication_role", "set", false)])], "agate.sql.deny_setting")
	denied_by([with_settings(set_stmt, [setting("app.tenant", "set", false)])], "agate.sql.deny_setting")
	denied_by([with_settings(sel, [setting("log_statement", "set", true)])], "agate.sql.deny_setting")
	denied_by([with_settings(sel, [setting(null, "set", true)])], "agate.sql.deny_setting")
}

test_setting_reasons if {
	d := agate.decision with input as sql_command("prod-db", [with_settings(stmt("set", "VariableSetStmt", "SET"), [object.union(setting("log_statement", "set", false), {"context": "superuser"})])])
	d.reasons == ["agate.sql.deny_setting: SET log_statement is not allowed: it is not among the allowed settings (context superuser) (statement 1: SET)"]
	d2 := agate.decision with input as sql_command("prod-db", [with_settings(sel, [setting(null, "set", true)])])
	d2.reasons == ["agate.sql.deny_setting: set_config() of a setting whose name is not a constant is not allowed: the setting cannot be known (statement 1: SELECT)"]
}

test_allowed_settings if {
	set_stmt := stmt("set", "VariableSetStmt", "SET")
	allowed([with_settings(set_stmt, [setting("search_path", "set", false)])])
	allowed([with_settings(set_stmt, [setting("timezone", "set", false)])])
	allowed([with_settings(sel, [setting("statement_timeout", "set", true)])])

	# RESET returns to the configured value
	allowed([with_settings(set_stmt, [setting("all", "reset", false)])])
	allowed([with_settings(set_stmt, [setting("role", "reset", false)])])
}

test_settings_allowed_by_data if {
	set_stmt := with_settings(stmt("set", "VariableSetStmt", "SET"), [setting("app.tenant", "set", false)])
	d := agate.decision with input as sql_command("prod-db", [set_stmt])
		with data.agate.config.allow_settings as ["app.*"]
	d.allow == true
	d2 := agate.decision with input as sql_command("prod-db", [set_stmt])
		with data.agate.config.connections as {"prod-db": {"allow_settings": ["App.Tenant"]}}
	d2.allow == true
	d3 := agate.decision with input as sql_command("staging-db", [set_stmt])
		with data.agate.config.connections as {"prod-db": {"allow_settings": ["app.tenant"]}}
	d3.allow == false
}

# --- COPY

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

# --- several statements, no facts

test_multi_statement_with_one_drop_denied if {
	d := agate.decision with input as sql_command("prod-db", [sel, sel, drop_table])
	d.allow == false
	d.reasons == ["agate.sql.deny_drop: DROP is not allowed (statement 3: DROP TABLE)"]
}

test_multi_statement_all_reasons if {
	d := agate.decision with input as sql_command("prod-db", [drop_table, stmt("ddl", "CreateRoleStmt", "CREATE ROLE"), copy_stmt("to", true, false, false)])
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
		"command": {"text": "uptime", "exec": {"commands": [{"program": "uptime", "name": "uptime", "args": [], "assigns": [], "redirects": [], "dynamic": false, "glob": false, "via": []}], "opaque": []}},
	}
	d.allow == true
}
