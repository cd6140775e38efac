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
