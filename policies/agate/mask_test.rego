package agate_test

import data.agate

mask_input(connection) := {
	"stage": "command",
	"identity": {"subject": "alice", "groups": []},
	"connection": {"name": connection, "protocol": "postgres"},
	"command": {"text": "SELECT 1", "sql": {"multi": false, "statements": []}},
}

test_secrets_are_masked_by_default if {
	d := agate.decision with input as mask_input("app")
	d.mask == {"columns": [], "detectors": agate.secret_detectors}
	"jwt" in d.mask.detectors
	not "email" in d.mask.detectors
}

test_global_detectors_replace_the_default if {
	d := agate.decision with input as mask_input("app")
		with data.agate.config.mask as {"detectors": ["*"], "columns": ["public.users.email:hmac"]}
	d.mask == {"columns": ["public.users.email:hmac"], "detectors": ["*"]}
}

test_connection_detectors_replace_global_and_columns_add_up if {
	d := agate.decision with input as mask_input("analytics")
		with data.agate.config as {
			"mask": {"detectors": ["*"], "columns": ["*password*"]},
			"connections": {"analytics": {"mask": {"detectors": [], "columns": ["users.ssn:partial"]}}},
		}
	d.mask == {"columns": ["*password*", "users.ssn:partial"], "detectors": []}
}

test_other_connections_keep_the_global_mask if {
	d := agate.decision with input as mask_input("app")
		with data.agate.config as {
			"mask": {"detectors": ["email"]},
			"connections": {"analytics": {"mask": {"detectors": []}}},
		}
	d.mask == {"columns": [], "detectors": ["email"]}
}
