package agate_test

import data.agate

# Command stage, SSH exec rules. Facts as src/protocols/ssh/exec-facts.ts gives them
# (test/ssh-policy.test.ts checks the same rules on lines parsed by the real parser).

cmd(name, args) := {"program": name, "name": name, "args": args, "assigns": [], "redirects": [], "dynamic": false, "glob": false, "via": []}

exec_input(commands, opaque) := {
	"stage": "command",
	"now": "2026-01-01T00:00:00Z",
	"identity": {"subject": "ci", "issuer": "agate:api-key", "groups": ["ci"], "kind": "service"},
	"connection": {"name": "web", "protocol": "ssh", "target": "deploy@10.0.0.1:22"},
	"session": {"id": "s1", "started_at": "2026-01-01T00:00:00Z"},
	"command": {"text": "…", "exec": {"commands": commands, "pipelines": [], "operators": [], "subshells": 0, "substitutions": 0, "heredocs": 0, "functions": [], "opaque": opaque}},
}

ssh_allowed(commands) if {
	d := agate.decision with input as exec_input(commands, [])
	d.allow == true
	d.reasons == []
}

ssh_denied_by(commands, opaque, rule) if {
	d := agate.decision with input as exec_input(commands, opaque)
	d.allow == false
	some r in d.reasons
	startswith(r, concat("", [rule, ": "]))
}

test_ordinary_commands_allowed if {
	ssh_allowed([cmd("ls", ["-la", "/etc"])])
	ssh_allowed([cmd("rm", ["-rf", "/tmp/build-123"]), cmd("rm", ["-r", "/var/lib/app/cache"])])
	ssh_allowed([cmd("cat", ["/etc/passwd"]), cmd("ls", ["/root/.ssh/id_rsa.pub"])])
	ssh_allowed([cmd("dd", ["if=/dev/zero", "of=/tmp/x", "bs=1M", "count=1"])])
	ssh_allowed([cmd("systemctl", ["status", "nginx"])])
}

test_unparsed_denied if {
	every patch in [[{"op": "remove", "path": "/command"}], [{"op": "remove", "path": "/command/exec"}]] {
		d := agate.decision with input as json.patch(exec_input([], []), patch)
		d.allow == false
		some r in d.reasons
		startswith(r, "agate.ssh.deny_unparsed: ")
	}
}

test_opaque_denied if ssh_denied_by([cmd("sh", [])], ["sh reads its script from a pipe, which agate cannot see before it runs"], "agate.ssh.deny_opaque")

test_rm_system_denied if {
	every a in ["/", "//", "/.", "/etc", "/usr/", "/var/.", "/*", "/e*", "/{etc,usr}", "/tmp/../etc"] {
		ssh_denied_by([cmd("rm", ["-rf", a])], [], "agate.ssh.deny_rm_system")
	}
}

test_rm_system_every_spelling if {
	every o in ["-r", "-R", "-fr", "-Rf", "--recursive"] {
		ssh_denied_by([cmd("rm", [o, "/etc"])], [], "agate.ssh.deny_rm_system")
	}
}

test_rm_no_preserve_root if ssh_denied_by([cmd("rm", ["--no-preserve-root", "-rf", "x"])], [], "agate.ssh.deny_rm_system")

dyn(c, via) := object.union(c, {"dynamic": true, "via": [via]})

test_find_deleting_from_a_system_path_denied if {
	ssh_denied_by([cmd("find", ["/", "-exec", "rm", "-rf", "{}", "+"]), dyn(cmd("rm", ["-rf", "{}"]), "find -exec")], [], "agate.ssh.deny_rm_system")
	ssh_denied_by([cmd("find", ["/etc", "-name", "*.conf", "-delete"])], [], "agate.ssh.deny_rm_system")
	ssh_denied_by([cmd("find", ["/usr", "/srv/app", "-type", "f", "-execdir", "/bin/rm", "{}", ";"])], [], "agate.ssh.deny_rm_system")
	ssh_denied_by([cmd("find", ["/", "(", "-name", "x", ")", "-ok", "shred", "{}", ";"])], [], "agate.ssh.deny_rm_system")
}

test_find_deleting_elsewhere_allowed if {
	ssh_allowed([cmd("find", [".", "-name", "*.o", "-delete"])])
	ssh_allowed([cmd("find", ["/tmp", "-mtime", "+7", "-delete"])])
	ssh_allowed([cmd("find", ["/var/log/app", "-name", "*.gz", "-exec", "rm", "{}", "+"]), dyn(cmd("rm", ["{}"]), "find -exec")])
	ssh_allowed([cmd("find", ["/", "-name", "core", "-print"])])
}

test_rm_recursive_of_runtime_paths_denied if {
	ssh_denied_by([cmd("ls", ["/"]), cmd("xargs", ["rm", "-rf"]), dyn(cmd("rm", ["-rf"]), "xargs")], [], "agate.ssh.deny_rm_system")
	ssh_allowed([cmd("xargs", ["rm", "-f"]), dyn(cmd("rm", ["-f"]), "xargs")])
}

test_rm_after_cd_to_a_system_path if {
	ssh_denied_by([cmd("cd", ["/"]), cmd("rm", ["-rf", "*"])], [], "agate.ssh.deny_rm_system")
	ssh_denied_by([cmd("cd", ["/etc"]), cmd("rm", ["-r", "."])], [], "agate.ssh.deny_rm_system")
	ssh_denied_by([cmd("cd", ["/usr/"]), cmd("rm", ["-rf", "./*"])], [], "agate.ssh.deny_rm_system")
	ssh_allowed([cmd("cd", ["/tmp"]), cmd("rm", ["-rf", "build"])])
	ssh_allowed([cmd("cd", ["/srv/app"]), cmd("rm", ["-rf", "*"])])
}

test_rm_not_recursive_allowed if ssh_allowed([cmd("rm", ["/etc/app.conf.bak"])])

test_mkfs_denied if {
	every n in ["mkfs", "mkfs.ext4", "mke2fs", "mkswap", "wipefs"] {
		ssh_denied_by([cmd(n, ["/dev/sda1"])], [], "agate.ssh.deny_mkfs")
	}
}

test_device_write_denied if {
	ssh_denied_by([cmd("dd", ["if=/dev/zero", "of=/dev/sda"])], [], "agate.ssh.deny_device_write")
	c := object.union(cmd("echo", ["x"]), {"redirects": [{"op": ">", "fd": null, "target": "/dev/nvme0n1"}]})
	ssh_denied_by([c], [], "agate.ssh.deny_device_write")
}

test_device_null_allowed if ssh_allowed([object.union(cmd("echo", ["x"]), {"redirects": [{"op": ">", "fd": "2", "target": "/dev/null"}]})])

test_power_denied if {
	every c in [cmd("shutdown", ["-h", "now"]), cmd("reboot", []), cmd("halt", []), cmd("poweroff", []), cmd("init", ["0"]), cmd("systemctl", ["reboot"])] {
		ssh_denied_by([c], [], "agate.ssh.deny_power")
	}
}

test_secret_read_denied if {
	every a in ["/etc/shadow", "/etc//gshadow", "/root/.ssh/id_rsa", "~/.ssh/id_ed25519", "$HOME/.ssh/id_ecdsa", "if=/etc/shadow"] {
		ssh_denied_by([cmd("cat", [a])], [], "agate.ssh.deny_secret_read")
	}
}

test_secret_read_redirect_denied if ssh_denied_by([object.union(cmd("base64", []), {"redirects": [{"op": "<", "fd": null, "target": "/etc/shadow"}]})], [], "agate.ssh.deny_secret_read")

test_download_exec_denied if {
	curl := object.union(cmd("curl", ["-s", "https://x.example/i.sh"]), {"pipeline": 0, "stage": 0})
	bash := object.union(cmd("bash", []), {"pipeline": 0, "stage": 1, "via": ["sudo"]})
	ssh_denied_by([curl, bash], [], "agate.ssh.deny_download_exec")
}

test_download_to_file_allowed if {
	curl := object.union(cmd("curl", ["-o", "/tmp/x", "https://x.example/x"]), {"pipeline": 0, "stage": 0})
	wc := object.union(cmd("wc", ["-c"]), {"pipeline": 0, "stage": 1})
	ssh_allowed([curl, wc])
}

test_rules_switch_off if {
	d := agate.decision with input as exec_input([cmd("reboot", [])], []) with data.agate.config as {"connections": {"web": {"allow_rules": ["deny_power"]}}}
	d.allow == true
}

test_nested_where_named if {
	d := agate.decision with input as exec_input([object.union(cmd("rm", ["-rf", "/"]), {"via": ["sh -c", "$()"]})], [])
	some r in d.reasons
	contains(r, "inside sh -c → $()")
}

ssh_held_by(commands, rule) if {
	d := agate.decision with input as exec_input(commands, [])
	d.allow == true
	d.approval.required == true
	some r in d.reasons
	startswith(r, concat("", [rule, ": "]))
}

test_privileged_held if {
	every n in ["sudo", "doas", "su"] {
		ssh_held_by([cmd(n, ["id"])], "agate.ssh.approve_privileged")
	}
}

test_service_stop_held if {
	every c in [cmd("systemctl", ["restart", "nginx"]), cmd("systemctl", ["disable", "--now", "x"]), cmd("service", ["nginx", "stop"])] {
		ssh_held_by([c], "agate.ssh.approve_service_stop")
	}
}

test_kill_init_held if ssh_held_by([cmd("kill", ["-9", "1"])], "agate.ssh.approve_kill_init")

test_kill_other_allowed if ssh_allowed([cmd("kill", ["-9", "1234"])])

test_package_removal_held if {
	every c in [cmd("apt-get", ["-y", "remove", "nginx"]), cmd("apt", ["purge", "x"]), cmd("dpkg", ["-P", "x"]), cmd("rpm", ["-e", "x"]), cmd("dnf", ["erase", "x"]), cmd("apk", ["del", "x"]), cmd("pacman", ["-Rns", "x"])] {
		ssh_held_by([c], "agate.ssh.approve_package_removal")
	}
}

test_package_install_allowed if ssh_allowed([cmd("apt-get", ["install", "-y", "jq"])])

test_held_and_denied_is_denied if ssh_denied_by([cmd("sudo", ["reboot"]), object.union(cmd("reboot", []), {"via": ["sudo"]})], [], "agate.ssh.deny_power")
