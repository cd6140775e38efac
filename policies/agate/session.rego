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

# The settings a client asks for when it connects (PostgreSQL startup
# parameters and the -c settings of `options`, in input.session.settings)
# may be the ones SET may change (sql.rego: the same allowlist, extended by
# data.agate.config.allow_settings and per connection); any other refuses
# the session. (`replication` is no setting: the gateway refuses it before
# the policy is asked.)
violations contains violation(
	"agate.session.deny_setting", "deny_setting", true,
	concat("", [
		"startup parameter ", s.name, " is not allowed: it is not among the allowed settings",
		" (allow it with allow_settings in the policy data, or connect without it)",
	]),
) if {
	input.stage == "session"
	some s in input.session.settings
	not setting_allowed(lower(s.name))
}
