package agate_test

import data.agate

# Session stage: any verified identity may open a session.

test_session_allowed_for_a_subject if {
	agate.decision.allow with input as session_input
}

test_session_allowed_for_a_service_account if {
	agate.decision.allow with input as object.union(session_input, {"identity": {"subject": "svc:ci", "kind": "service", "groups": []}})
}

test_session_denied_without_identity if {
	d := agate.decision with input as object.remove(session_input, ["identity"])
	d.allow == false
	d.reasons == ["agate.session.deny_no_identity: a verified identity is required to open a session (identity.subject is empty)"]
}

test_session_denied_for_empty_subject if {
	d := agate.decision with input as object.union(session_input, {"identity": {"subject": "  "}})
	d.allow == false
}

test_session_denied_for_non_string_subject if {
	d := agate.decision with input as object.union(session_input, {"identity": {"subject": 42}})
	d.allow == false
}

# Settings asked for at connect: the SET allowlist.

with_startup(settings) := object.union(session_input, {"session": {"id": "s1", "settings": settings}})

test_session_allows_allowlisted_startup_settings if {
	agate.decision.allow with input as with_startup([
		{"name": "search_path", "value": "foo", "from": "options"},
		{"name": "statement_timeout", "value": "5s", "from": "parameter"},
		{"name": "datestyle", "value": "ISO, MDY", "from": "parameter"},
		{"name": "application_name", "value": "psql", "from": "parameter"},
	])
}

test_session_allows_no_startup_settings if {
	agate.decision.allow with input as with_startup([])
}

test_session_denies_a_startup_setting_off_the_allowlist if {
	d := agate.decision with input as with_startup([
		{"name": "search_path", "value": "foo", "from": "options"},
		{"name": "log_statement", "value": "none", "from": "options"},
	])
	d.allow == false
	d.reasons == ["agate.session.deny_setting: startup parameter log_statement is not allowed: it is not among the allowed settings (allow it with allow_settings in the policy data, or connect without it)"]
}

test_session_denies_role_and_session_authorization_at_startup if {
	d := agate.decision with input as with_startup([
		{"name": "role", "value": "postgres", "from": "parameter"},
		{"name": "session_authorization", "value": "postgres", "from": "options"},
	])
	count(d.reasons) == 2
}

test_session_startup_setting_allowed_by_data if {
	agate.decision.allow with input as with_startup([{"name": "app.tenant", "value": "7", "from": "options"}])
		with data.agate.config.allow_settings as ["app.*"]
	agate.decision.allow with input as with_startup([{"name": "jit_above_cost", "value": "1", "from": "parameter"}])
		with data.agate.config.connections as {"prod-db": {"allow_settings": ["JIT_above_cost"]}}
	not agate.decision.allow with input as with_startup([{"name": "jit_above_cost", "value": "1", "from": "parameter"}])
		with data.agate.config.connections as {"other-db": {"allow_settings": ["jit_above_cost"]}}
}
