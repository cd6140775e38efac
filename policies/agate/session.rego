# Session stage: who may open a session at all.
package agate

violations contains violation(
	"agate.session.deny_no_identity", "deny_no_identity", false,
	"a verified identity is required to open a session (identity.subject is empty)",
) if {
	input.stage == "session"
	not has_subject
}

has_subject if {
	is_string(input.identity.subject)
	trim_space(input.identity.subject) != ""
}
