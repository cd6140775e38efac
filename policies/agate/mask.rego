# What agate masks in responses (decision.mask), and in the audit record of
# every command: see README "Masking" for the rule syntax.
#
#   detectors  by default the secret detectors: cloud keys, tokens, JWTs,
#              private keys, passwords in URLs and key=value secrets. Personal
#              data detectors (email, card, iban, ssn, phone, ipv4, ipv6) are
#              switched on by naming them. "*" names every detector, and a
#              ":partial" or ":hmac" suffix picks the style ("email:hmac").
#   columns    none by default. "schema.table.column", "table.column" or a
#              bare column name; "*" matches any run of characters.
#
# From data, for all connections or per connection. A connection's detectors
# replace the global list (an empty list switches detection off there); its
# columns are added to the global ones:
#
#   {"agate": {"config": {
#      "mask": {"detectors": ["*"], "columns": ["public.users.email:hmac", "*password*"]},
#      "connections": {"analytics": {"mask": {"detectors": ["email", "card:partial"]}}}
#   }}}
package agate

secret_detectors := [
	"aws_access_key", "aws_secret_key", "github_token", "gitlab_token", "slack_token",
	"jwt", "pem_private_key", "url_password", "kv_secret",
]

connection_mask := data.agate.config.connections[input.connection.name].mask

mask_detectors := d if {
	d := connection_mask.detectors
} else := d if {
	d := data.agate.config.mask.detectors
} else := secret_detectors

mask_config := c if {
	c := data.agate.config
} else := {}

mask_columns := array.concat(
	object.get(mask_config, ["mask", "columns"], []),
	object.get(mask_config, ["connections", object.get(input, ["connection", "name"], ""), "mask", "columns"], []),
)

mask := {"columns": mask_columns, "detectors": mask_detectors}
