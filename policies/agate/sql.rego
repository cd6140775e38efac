# Command stage, SQL: an allowlist. Ordinary application work is allowed;
# ordinary DDL waits for approval; every other statement is denied, by a
# rule named after what it does. Rules on the target's catalog facts then
# deny, in allowed statements, writes to catalogs, privileged, unknown or
# dangerous functions, settings outside an allowlist and reads of server
# configuration. Each rule looks at every statement, so one bad statement
# denies the whole query string.
#
# Facts per statement (see SqlStatement in src/core/types.ts): kind, node
# (libpg-query node type), tag, reads, writes, functions (lower-case,
# schema-qualified when written so), settings, has_where, copy, temp,
# subcommands, inner, text; from the target's catalog (facts.ts): calls
# (every candidate function of every call), relations (every candidate
# relation read or written) and each setting's context; and
# input.command.sql.catalog.known (false when the catalog could not be asked).
package agate

# sql_statement[i] is statement i (from 0) of this command.
sql_statement[i] := st if {
	input.stage == "command"
	some i, st in input.command.sql.statements
}

# where(i, st) says which statement, for reasons: "statement 1: DROP TABLE".
where(i, st) := concat("", ["(statement ", format_int(i + 1, 10), ": ", st.tag, ")"])

# ---------------------------------------------------------------------------
# The allowlist: every statement, and every statement run inside it (the
# body of EXPLAIN, PREPARE and DECLARE, the elements of CREATE SCHEMA), has
# one class. "allowed" and "ddl" (approvals, approve_ddl below) pass this
# part; every other class is the short name of the rule that denies it.

# sql_unit_class[[i, tag, inside, class]]: statement i, and each statement
# run inside it, with its tag and its class, computed once. The set holds
# what the reasons quote, not the statements: a decision depends only on
# the facts the rules read (agate caches decisions on exactly those).
sql_unit_class contains [i, st.tag, "", statement_class(st)] if some i, st in sql_statement

sql_unit_class contains [i, u.tag, concat("", [" (inside ", st.tag, ")"]), statement_class(u)] if {
	some i, st in sql_statement
	some u in object.get(st, "inner", [])
}

statement_class(u) := "allowed" if {
	allowed_statement(u)
} else := "ddl" if {
	ordinary_ddl(u)
} else := "deny_opaque_code" if {
	opaque_code(u)
} else := "deny_function_binding" if {
	u.node in function_binding_nodes
} else := "deny_external_access" if {
	u.node in external_access_nodes
} else := "deny_drop" if {
	u.node == "DropStmt"
} else := "deny_truncate" if {
	u.node == "TruncateStmt"
} else := "deny_alter" if {
	altered_relation(u)
} else := "deny_statement"

# Queries and data changes (catalog writes are denied on facts, below).
allowed_statement(u) if u.kind in {"select", "insert", "update", "delete", "merge"}

# Transaction control within the session; two-phase commit (PREPARE
# TRANSACTION, COMMIT/ROLLBACK PREPARED) outlives it and is not allowed.
allowed_statement(u) if {
	u.node == "TransactionStmt"
	u.tag in {"BEGIN", "START TRANSACTION", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"}
}

# Cursors, prepared statements, EXPLAIN (their bodies are judged as units),
# COPY (the copy rules below), notifications, settings (deny_setting
# below), SHOW (deny_server_config below), locks, DISCARD, SET CONSTRAINTS,
# CALL (the function rules below), and maintenance that changes no data.
allowed_statement(u) if u.node in {
	"DeclareCursorStmt", "FetchStmt", "ClosePortalStmt",
	"PrepareStmt", "ExecuteStmt", "DeallocateStmt", "ExplainStmt",
	"CopyStmt", "ListenStmt", "UnlistenStmt", "NotifyStmt",
	"VariableSetStmt", "VariableShowStmt", "LockStmt", "DiscardStmt",
	"ConstraintsSetStmt", "CallStmt", "VacuumStmt", "RefreshMatViewStmt",
}

# Temporary tables, views and sequences (CREATE TEMP …, SELECT INTO TEMP).
allowed_statement(u) if {
	u.node in {"CreateStmt", "CreateTableAsStmt", "ViewStmt", "CreateSeqStmt", "SelectStmt"}
	u.temp == true
}

# DDL on ordinary objects: held for approval (approve_ddl).
ordinary_ddl(u) if u.node in {
	"CreateStmt", "CreateTableAsStmt", "ViewStmt", "CreateSeqStmt", "AlterSeqStmt",
	"IndexStmt", "CreateEnumStmt", "AlterEnumStmt", "CompositeTypeStmt",
	"CreateRangeStmt", "CreateDomainStmt", "CreateSchemaStmt", "CommentStmt",
	"CreateStatsStmt",
}

# SELECT … INTO (a new table)
ordinary_ddl(u) if {
	u.node == "SelectStmt"
	u.kind == "ddl"
}

# ALTER TABLE (or INDEX, VIEW, …) whose every subcommand adds to or
# adjusts the relation without losing data or changing who may do what.
ordinary_ddl(u) if {
	u.node == "AlterTableStmt"
	u.tag in relation_alter_tags
	count(u.subcommands) > 0
	every c in u.subcommands {
		c in ordinary_subcommands
	}
}

# Renaming a relation, a column or a constraint.
ordinary_ddl(u) if {
	u.node == "RenameStmt"
	u.tag in relation_alter_tags
}

relation_alter_tags := {"ALTER TABLE", "ALTER INDEX", "ALTER SEQUENCE", "ALTER VIEW", "ALTER MATERIALIZED VIEW"}

ordinary_subcommands := {
	"AT_AddColumn", "AT_AddColumnToView", "AT_ColumnDefault", "AT_CookedColumnDefault",
	"AT_DropNotNull", "AT_SetNotNull", "AT_SetStatistics", "AT_SetOptions", "AT_ResetOptions",
	"AT_SetStorage", "AT_SetCompression", "AT_AddIndex", "AT_AddConstraint", "AT_AlterConstraint",
	"AT_ValidateConstraint", "AT_AddIndexConstraint", "AT_DropConstraint", "AT_AlterColumnType",
	"AT_SetRelOptions", "AT_ResetRelOptions", "AT_AddIdentity", "AT_SetIdentity", "AT_DropIdentity",
	"AT_ClusterOn", "AT_DropCluster",
}

# Other ALTERs of relations and types: dropping columns, owners, triggers
# and row security on or off, partitions, inheritance, schemas.
altered_relation(u) if {
	u.node in {"AlterTableStmt", "RenameStmt", "AlterObjectSchemaStmt", "AlterDomainStmt"}
	u.tag in (relation_alter_tags | {"ALTER FOREIGN TABLE", "ALTER TYPE", "ALTER DOMAIN"})
}

# Every class the allowlist denies is reported by this one rule, as
# agate.sql.<class>, with class_reason's sentence.
violations contains violation(concat(".", ["agate.sql", cls]), cls, true, concat(" ", [class_reason(cls, tag, inside), where(i, st)])) if {
	some unit in sql_unit_class
	[i, tag, inside, cls] := unit
	not cls in {"allowed", "ddl"}
	st := sql_statement[i]
}

class_reason("deny_statement", tag, inside) := concat("", [tag, inside, " is not an allowed statement"])

class_reason("deny_drop", _, inside) := concat("", ["DROP is not allowed", inside])

class_reason("deny_truncate", _, _) := "TRUNCATE is not allowed"

class_reason("deny_alter", tag, inside) := concat("", [tag, inside, " of this kind is not allowed (only additions such as ADD COLUMN are held for approval)"])

# Code whose effects the analyser cannot see: a DO block or a function or
# procedure body (which could call pg_read_file where no rule looks), and
# LOAD, which loads a shared library from the server's disk.
class_reason("deny_opaque_code", _, _) := "code the policy cannot inspect is not allowed (DO blocks, function bodies, LOAD)"

opaque_code(st) if st.kind == "do"

opaque_code(st) if st.node in {"DoStmt", "CreateFunctionStmt", "AlterFunctionStmt", "LoadStmt", "CreatePLangStmt"}

# Statements that bind a function to syntax or to events, so that later
# statements call it without naming it: CREATE OPERATOR ### (PROCEDURE =
# pg_read_file) makes `SELECT ### '/etc/passwd'` read a file with no function
# in sight. DefineStmt covers CREATE OPERATOR, AGGREGATE, base TYPE,
# COLLATION and text search objects; a trigger runs its function on later
# writes; ALTER TYPE/OPERATOR can change the functions bound.
class_reason("deny_function_binding", _, _) := "binding functions to operators, casts, aggregates, types, triggers or events is not allowed: later statements would call them unseen"

function_binding_nodes := {
	"DefineStmt", "CreateCastStmt", "CreateConversionStmt", "CreateTransformStmt",
	"CreateEventTrigStmt", "AlterEventTrigStmt", "CreateOpClassStmt", "CreateOpFamilyStmt",
	"AlterOpFamilyStmt", "CreateTrigStmt", "AlterTypeStmt", "AlterOperatorStmt", "CreateAmStmt",
}

# Extensions, foreign-data wrappers, foreign servers and tables,
# subscriptions and tablespaces open paths out of the database: file_fdw
# reads server files through a plain SELECT, postgres_fdw and dblink reach
# other servers, a subscription makes the server connect out.
class_reason("deny_external_access", _, _) := "extensions, foreign servers and tables, subscriptions and tablespaces are not allowed: they reach outside the database"

external_access_nodes := {
	"CreateExtensionStmt", "AlterExtensionStmt", "AlterExtensionContentsStmt",
	"CreateFdwStmt", "AlterFdwStmt", "CreateForeignServerStmt", "AlterForeignServerStmt",
	"CreateForeignTableStmt", "ImportForeignSchemaStmt",
	"CreateUserMappingStmt", "AlterUserMappingStmt", "DropUserMappingStmt",
	"CreateSubscriptionStmt", "AlterSubscriptionStmt", "DropSubscriptionStmt",
	# CREATE TABLESPACE ... LOCATION '/dir' writes into the server's file system
	"CreateTableSpaceStmt", "AlterTableSpaceOptionsStmt", "AlterTableMoveAllStmt",
}

# ---------------------------------------------------------------------------
# Rules on facts, for every statement (allowed or not).

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

# A statement that names functions or relations is decided on what the
# target's catalog says about them; when it could not be asked, or was
# not, the statement is refused.
violations contains violation(
	"agate.sql.deny_catalog_unknown", "deny_catalog_unknown", true,
	concat("", ["the target's catalog could not be asked about the functions and relations it names", catalog_error, ", so it cannot be checked ", where(i, st)]),
) if {
	some i, st in sql_statement
	names_catalog_objects(st)
	not input.command.sql.catalog.known == true
}

names_catalog_objects(st) if count(st.functions) > 0

names_catalog_objects(st) if count(st.reads) > 0

names_catalog_objects(st) if count(st.writes) > 0

default catalog_error := ""

catalog_error := concat("", [" (", input.command.sql.catalog.error, ")"]) if is_string(input.command.sql.catalog.error)

# Writes to the system catalogs are ALTER, DROP and GRANT by another name
# (UPDATE pg_authid SET rolsuper, UPDATE pg_class SET relname); so is a
# LOCK on one, which stops every session. Any candidate counts: an
# unqualified name that exists in pg_catalog is the catalog's.
violations contains violation(
	"agate.sql.deny_catalog_write", "deny_catalog_write", true,
	concat("", ["writing to the system catalog (", name, ") is not allowed ", where(i, st)]),
) if {
	some i, st in sql_statement
	some name in catalog_writes(st)
}

catalog_writes(st) := ({concat(".", [r.schema, unqualified(r.name)]) |
	some r in object.get(st, "relations", [])
	r.catalog == true
	r.access == "write"
} | {concat(".", [r.schema, unqualified(r.name)]) |
	st.node == "LockStmt"
	some r in object.get(st, "relations", [])
	r.catalog == true
}) | {w |
	some w in st.writes
	catalog_name(w)
}

# "pg_catalog.pg_class", "db.information_schema.x": named in a catalog schema.
catalog_name(name) if {
	parts := split(name, ".")
	count(parts) > 1
	schema := parts[count(parts) - 2]
	catalog_schema(schema)
}

catalog_schema(s) if s in {"pg_catalog", "information_schema"}

catalog_schema(s) if startswith(s, "pg_toast")

# unqualified drops any schema: "pg_catalog.pg_read_file" -> "pg_read_file".
unqualified(name) := last if {
	parts := split(name, ".")
	last := parts[count(parts) - 1]
}

# Functions PUBLIC may not execute are the server's own privileged
# operations (pg_read_file, pg_reload_conf, lo_import, …): a credential
# that may run them was granted more than an application needs.
violations contains violation(
	"agate.sql.deny_privileged_function", "deny_privileged_function", true,
	concat("", ["calling ", c.schema, ".", unqualified(c.name), "() is not allowed: PUBLIC may not execute it, it is a privileged function ", where(i, st)]),
) if {
	some i, st in sql_statement
	some c in object.get(st, "calls", [])
	c.found == true
	c.public == false
}

# A SECURITY DEFINER function runs with its owner's rights, not the
# session's, and its body is not visible to the policy.
violations contains violation(
	"agate.sql.deny_security_definer", "deny_security_definer", true,
	concat("", ["calling ", c.schema, ".", unqualified(c.name), "() is not allowed: it is SECURITY DEFINER and runs with its owner's rights ", where(i, st)]),
) if {
	some i, st in sql_statement
	some c in object.get(st, "calls", [])
	c.security_definer == true
}

# A user-defined function in an untrusted language (C, internal,
# plpython3u, …) that no extension installed can do anything the server
# process can (a C function bound to libc's system()).
violations contains violation(
	"agate.sql.deny_untrusted_function", "deny_untrusted_function", true,
	concat("", ["calling ", c.schema, ".", unqualified(c.name), "() is not allowed: it is user-defined in the untrusted language ", c.language, " and belongs to no extension ", where(i, st)]),
) if {
	some i, st in sql_statement
	some c in object.get(st, "calls", [])
	c.builtin == false
	c.trusted == false
	c.extension == null
}

# A function the catalog does not know (nor a type, which would make the
# call a cast) cannot be judged; PostgreSQL would refuse it anyway.
violations contains violation(
	"agate.sql.deny_unknown_function", "deny_unknown_function", true,
	concat("", ["calling ", c.name, "() is not allowed: the target's catalog has no such function ", where(i, st)]),
) if {
	some i, st in sql_statement
	some c in object.get(st, "calls", [])
	c.found == false
	not c.type == true
	not c.name in grammar_functions
}

# Names PostgreSQL's grammar gives SQL syntax (EXTRACT, SYSTEM_USER) that
# older servers implement otherwise: the parser (PostgreSQL 18) names them
# though the target's catalog may not have them.
grammar_functions := {"pg_catalog.extract", "pg_catalog.system_user", "pg_catalog.timezone"}

violations contains violation(
	"agate.sql.deny_server_function", "deny_server_function", true,
	concat("", ["calling ", fn, "() is not allowed: it reaches outside the database or acts on the server or other sessions ", where(i, st)]),
) if {
	some i, st in sql_statement
	some fn in sql_called[i]
	server_function(fn)
}

sql_called[i] := called(st) if some i, st in sql_statement

# called(st): every function name as written, and schema.name of every candidate, lower-case.
called(st) := {lower(fn) | some fn in st.functions} | {lower(concat(".", [c.schema, unqualified(c.name)])) |
	some c in object.get(st, "calls", [])
	c.found == true
}

server_function(fn) if server_functions[unqualified(fn)]

server_function(fn) if {
	some prefix in server_function_prefixes
	startswith(unqualified(fn), prefix)
}

# Functions that read or write the server's file system, open connections
# to other servers, signal other sessions, or change the server's state
# (configuration, WAL, backups, replication). Each name says where it
# comes from: "core" (PostgreSQL 13-17), "core N-M" (only those versions),
# or the extension. test/sql-policy.test.ts checks them against pg_proc.
server_functions := {
	# server files
	"pg_read_file": "core", "pg_read_file_old": "core 13-15", "pg_read_binary_file": "core",
	"pg_stat_file": "core", "pg_ls_dir": "core", "pg_ls_logdir": "core", "pg_ls_waldir": "core",
	"pg_ls_tmpdir": "core", "pg_ls_archive_statusdir": "core", "pg_ls_logicalsnapdir": "core 15-17",
	"pg_ls_logicalmapdir": "core 15-17", "pg_ls_replslotdir": "core 15-17", "pg_ls_summariesdir": "core 17",
	"pg_current_logfile": "core", "pg_import_system_collations": "core",
	"lo_import": "core", "lo_export": "core",
	"pg_file_write": "adminpack", "pg_file_rename": "adminpack", "pg_file_unlink": "adminpack",
	"pg_file_sync": "adminpack", "pg_logdir_ls": "adminpack", "pg_file_read": "adminpack 1.0",
	"pg_file_length": "adminpack 1.0",
	# other sessions
	"pg_terminate_backend": "core", "pg_cancel_backend": "core", "pg_log_backend_memory_contexts": "core 14-17",
	# the server's state
	"pg_reload_conf": "core", "pg_rotate_logfile": "core", "pg_rotate_logfile_old": "core 13-15",
	"pg_promote": "core", "pg_switch_wal": "core", "pg_create_restore_point": "core",
	"pg_backup_start": "core 15-17", "pg_backup_stop": "core 15-17",
	"pg_start_backup": "core 13-14", "pg_stop_backup": "core 13-14",
	"pg_wal_replay_pause": "core", "pg_wal_replay_resume": "core",
	"pg_create_physical_replication_slot": "core", "pg_create_logical_replication_slot": "core",
	"pg_drop_replication_slot": "core", "pg_copy_physical_replication_slot": "core",
	"pg_copy_logical_replication_slot": "core", "pg_replication_slot_advance": "core",
	"pg_sync_replication_slots": "core 17",
	# logical decoding reads every change of every table
	"pg_logical_slot_get_changes": "core", "pg_logical_slot_peek_changes": "core",
	"pg_logical_slot_get_binary_changes": "core", "pg_logical_slot_peek_binary_changes": "core",
	"pg_logical_emit_message": "core",
}

# dblink, dblink_exec, dblink_connect_u, …; pg_replication_origin_create, …
server_function_prefixes := {"dblink", "pg_replication_origin_"}

# Functions that run SQL handed to them as a string, or read whole tables,
# schemas or databases by name: the statement inside is invisible to the
# analyser and to masking, so `SELECT query_to_xml('select
# pg_read_file(...)', ...)` or `ts_rewrite('a'::tsquery, 'select …')` would
# slip past every other rule.
violations contains violation(
	"agate.sql.deny_dynamic_sql", "deny_dynamic_sql", true,
	concat("", ["calling ", fn, "() is not allowed: it runs SQL given as a string, which no rule can inspect ", where(i, st)]),
) if {
	some i, st in sql_statement
	some fn in sql_called[i]
	dynamic_sql_function(fn)
}

dynamic_sql_function(fn) if dynamic_sql_functions[unqualified(fn)]

dynamic_sql_function(fn) if dynamic_sql_functions[fn]

dynamic_sql_function(fn) if {
	some prefix in dynamic_sql_prefixes
	startswith(unqualified(fn), prefix)
}

dynamic_sql_functions := {
	"query_to_xml": "core", "query_to_xmlschema": "core", "query_to_xml_and_xmlschema": "core",
	"table_to_xml": "core", "table_to_xmlschema": "core", "table_to_xml_and_xmlschema": "core",
	"schema_to_xml": "core", "schema_to_xmlschema": "core", "schema_to_xml_and_xmlschema": "core",
	"database_to_xml": "core", "database_to_xmlschema": "core", "database_to_xml_and_xmlschema": "core",
	"cursor_to_xml": "core", "cursor_to_xmlschema": "core",
	# ts_rewrite(tsquery, text) and ts_stat(text) run their text argument
	"ts_rewrite": "core", "ts_stat": "core",
	"connectby": "tablefunc", "xpath_table": "xml2",
	# pg_cron runs its text argument later, as the job's owner
	"cron.schedule": "pg_cron", "cron.schedule_in_database": "pg_cron", "cron.alter_job": "pg_cron",
}

# tablefunc's crosstab, crosstab2, crosstab3, crosstab4; pg_background_launch, …
dynamic_sql_prefixes := {"crosstab", "pg_background_"}

# Server configuration, credentials, other sessions' queries and planner
# statistics (which hold sample values of every column, masked or not),
# through system views and functions, SHOW ALL, and SHOW or
# current_setting() of the settings PostgreSQL shows only to superusers.
violations contains violation(
	"agate.sql.deny_server_config", "deny_server_config", true,
	concat("", ["reading ", what, " is not allowed: it shows the server's configuration, credentials or other sessions ", where(i, st)]),
) if {
	some i, st in sql_statement
	some what in server_config_reads(i, st)
}

server_config_reads(i, st) := ({r |
	some r in st.reads
	server_config_relations[unqualified(r)]
} | {concat("", [fn, "()"]) |
	some fn in sql_called[i]
	server_config_functions[unqualified(fn)]
}) | {shown_setting(s) |
	some s in st.settings
	s.action == "show"
	secret_setting(s.name)
}

shown_setting(s) := concat("", ["setting ", s.name]) if is_string(s.name)

shown_setting(s) := "a setting whose name is not a constant" if not is_string(s.name)

secret_setting(name) if not is_string(name)

secret_setting(name) if name == "all"

secret_setting(name) if name in superuser_only_settings

server_config_relations := {
	"pg_settings": "configuration", "pg_file_settings": "configuration", "pg_hba_file_rules": "configuration",
	"pg_ident_file_mappings": "configuration", "pg_config": "configuration", "pg_db_role_setting": "configuration",
	"pg_authid": "credentials", "pg_shadow": "credentials", "pg_user_mapping": "credentials",
	"pg_user_mappings": "credentials", "pg_subscription": "credentials",
	"pg_stat_activity": "other sessions", "pg_stat_statements": "other sessions",
	"pg_statistic": "statistics", "pg_statistic_ext_data": "statistics", "pg_stats": "statistics",
	"pg_stats_ext": "statistics", "pg_stats_ext_exprs": "statistics",
}

server_config_functions := {
	"pg_show_all_settings": "core", "pg_show_all_file_settings": "core", "pg_hba_file_rules": "core",
	"pg_ident_file_mappings": "core 15-17", "pg_config": "core",
	"pg_stat_get_activity": "core", "pg_stat_get_backend_activity": "core",
	"pg_stat_statements": "pg_stat_statements",
}

# The settings PostgreSQL hides from roles without pg_read_all_settings
# (GUC_SUPERUSER_ONLY), PostgreSQL 13-17.
superuser_only_settings := {
	"config_file", "data_directory", "dynamic_library_path", "extension_destdir", "external_pid_file",
	"hba_file", "ident_file", "jit_provider", "krb_server_keyfile", "log_directory", "log_filename",
	"primary_conninfo", "session_preload_libraries", "shared_preload_libraries", "ssl_ciphers",
	"ssl_dh_params_file", "ssl_ecdh_curve", "ssl_max_protocol_version", "ssl_min_protocol_version",
	"ssl_passphrase_command", "unix_socket_directories", "ssl_groups", "ssl_tls13_ciphers",
	"promote_trigger_file", "stats_temp_directory", "archive_command", "restore_command",
}

# SET, SET LOCAL and set_config() may change only the settings an
# application needs; the rest (log_statement, session_replication_role,
# role, session_authorization, …) are the server operator's. RESET (and
# RESET ALL, DISCARD ALL) only returns to the configured values and is
# allowed. More settings can be allowed with data, globally or per
# connection; a name ending in ".*" allows a whole prefix ("app.*" for an
# application's own variables):
#
#   {"agate": {"config": {"allow_settings": ["work_mem", "app.*"],
#     "connections": {"prod-db": {"allow_settings": ["jit"]}}}}}
violations contains violation(
	"agate.sql.deny_setting", "deny_setting", true,
	concat("", [setting_change(s), " is not allowed: ", setting_why(s), " ", where(i, st)]),
) if {
	some i, st in sql_statement
	some s in st.settings
	s.action == "set"
	not setting_allowed(s.name)
}

setting_change(s) := concat("", ["set_config('", s.name, "')"]) if {
	s.call == true
	is_string(s.name)
}

setting_change(s) := "set_config() of a setting whose name is not a constant" if not is_string(s.name)

setting_change(s) := concat(" ", ["SET", s.name]) if {
	not s.call == true
	is_string(s.name)
}

setting_why(s) := concat("", ["it is not among the allowed settings (context ", object.get(s, "context", "unknown"), ")"]) if is_string(s.name)

setting_why(s) := "the setting cannot be known" if not is_string(s.name)

setting_allowed(name) if allowed_settings[name]

setting_allowed(name) if {
	is_string(name)
	some p, _ in allowed_settings
	endswith(p, ".*")
	startswith(name, trim_suffix(p, "*"))
}

allowed_settings[s] := true if some s in default_allowed_settings

allowed_settings[lower(s)] := true if some s in data.agate.config.allow_settings

allowed_settings[lower(s)] := true if some s in data.agate.config.connections[input.connection.name].allow_settings

default_allowed_settings := {
	# the session and its client
	"application_name", "search_path", "client_encoding", "client_min_messages",
	"datestyle", "intervalstyle", "timezone", "extra_float_digits", "bytea_output",
	"standard_conforming_strings", "xmloption", "xmlbinary", "lc_monetary", "lc_numeric",
	"lc_time", "default_text_search_config", "seed", "row_security",
	# timeouts
	"statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
	"idle_session_timeout", "transaction_timeout",
	# transactions
	"default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable",
	"transaction_isolation", "transaction_read_only", "transaction_deferrable", "transaction_snapshot",
	"synchronous_commit",
	# the planner and memory for this session's queries
	"work_mem", "hash_mem_multiplier", "maintenance_work_mem", "temp_buffers", "jit",
	"random_page_cost", "seq_page_cost", "effective_cache_size", "plan_cache_mode",
	"max_parallel_workers_per_gather", "geqo", "join_collapse_limit", "from_collapse_limit",
	"cursor_tuple_fraction", "gin_fuzzy_search_limit", "enable_seqscan", "enable_indexscan",
	"enable_indexonlyscan", "enable_bitmapscan", "enable_hashjoin", "enable_mergejoin",
	"enable_nestloop", "enable_sort", "enable_hashagg", "enable_material", "enable_memoize",
	"enable_partitionwise_join", "enable_partitionwise_aggregate",
}

# COPY must go through the client (STDIN/STDOUT).
violations contains violation(
	"agate.sql.deny_copy_program", "deny_copy_program", true,
	concat(" ", ["COPY ... PROGRAM is not allowed: it runs a program on the database server", where(i, st)]),
) if {
	some i, st in sql_statement
	st.kind == "copy"
	st.copy.program == true
}

# A COPY without facts is treated as a server file: unknown means no.
violations contains violation(
	"agate.sql.deny_copy_file", "deny_copy_file", true,
	concat(" ", ["COPY to or from a server file is not allowed; use STDIN or STDOUT", where(i, st)]),
) if {
	some i, st in sql_statement
	st.kind == "copy"
	not st.copy.program == true
	not st.copy.stdio == true
}
