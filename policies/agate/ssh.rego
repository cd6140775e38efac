# SSH exec rules: decided on input.command.exec, the facts the shell parser
# (mvdan/sh) gives for the command line (docs/ARCHITECTURE.md, "Policy
# contract"): every simple command the line can run, wherever it is, with
# its program's name, arguments (values, or source text when computed at run
# time), redirections and how it is reached (`via`: "sh -c", "$()", "sudo",
# "find -exec", …), the pipelines' stages, and what agate cannot see into
# (`opaque`).
#
# Denied, in any simple command of the line:
#   agate.ssh.deny_unparsed       an SSH command without exec facts
#   agate.ssh.deny_opaque         what agate cannot see before it runs: a program name
#                                 computed at run time, `sh -c "$X"`, `eval "$X"`, a shell
#                                 reading its script from a pipe or the client (`echo x | sh`)
#   agate.ssh.deny_rm_system      recursive rm of /, a top-level system path, a glob at the
#                                 top level, a path through `..`, or --no-preserve-root; find
#                                 deleting (-delete, -exec rm …) from / or a top-level system
#                                 path but /tmp; rm -r of paths added at run time (xargs);
#                                 rm -r of ".", ".." or a glob after cd to a system path
#   agate.ssh.deny_mkfs           mkfs, mkfs.*, mke2fs, mkswap, wipefs
#   agate.ssh.deny_device_write   dd of=/dev/…, or a redirection writing to a device
#                                 (other than /dev/null, /dev/stdout, /dev/stderr, /dev/tty, /dev/fd/*)
#   agate.ssh.deny_power          shutdown, reboot, halt, poweroff, init/telinit 0|6,
#                                 systemctl poweroff|reboot|halt|kexec
#   agate.ssh.deny_secret_read    naming /etc/shadow, /etc/gshadow or a private key ~/.ssh/id_*
#                                 (not *.pub) as an argument or redirection
#   agate.ssh.deny_download_exec  curl or wget piped into a shell
#
# Held for approval (approvers: approvals.approvers in data, as for SQL; "dba" by default,
# so give an SSH connection its own, e.g. connections: {web: {approvals: {approvers: [ops]}}}):
#   agate.ssh.approve_privileged     sudo, doas, su, runuser, pkexec
#   agate.ssh.approve_service_stop   systemctl stop|restart|disable|mask|kill, service NAME stop|restart
#   agate.ssh.approve_kill_init      kill of pid 1 (any signal)
#   agate.ssh.approve_package_removal  apt/apt-get remove|purge|autoremove, dpkg -r/-P, yum/dnf remove|erase,
#                                    rpm -e, apk del, zypper remove, pacman -R*
#
# Every rule can be switched off with allow_rules, as the SQL rules (decision.rego).
package agate

# Only the exec facts are read, never input.command whole: reading the text (or params) would
# keep the decision cache (src/policy/cache.ts) from sharing decisions between SQL statements too.
ssh_stage if {
	input.stage == "command"
	input.connection.protocol == "ssh"
}

ssh_exec := input.command.exec if ssh_stage

ssh_commands contains c if some c in ssh_exec.commands

shell_names := {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "rbash", "fish", "tcsh", "csh"}

# Where a command was found, for people: "at the top of the line" or "inside sh -c → $()".
ssh_where(c) := "at the top of the line" if count(c.via) == 0

ssh_where(c) := concat("", ["inside ", concat(" → ", c.via)]) if count(c.via) > 0

violations contains violation(
	"agate.ssh.deny_unparsed", "deny_unparsed", true,
	"the command has no exec facts (input.command.exec), so it cannot be checked",
) if {
	ssh_stage
	not input.command.exec.commands
}

violations contains violation("agate.ssh.deny_opaque", "deny_opaque", true, concat("", [why, "; agate decides only what it can see"])) if {
	some why in ssh_exec.opaque
}

# rm -r: recursive, by any spelling of the option (-r, -R, -rf, -fR, --recursive).
rm_recursive(c) if {
	some a in c.args
	regex.match(`^-[a-zA-Z]*[rR]`, a)
}

rm_recursive(c) if "--recursive" in c.args

system_dirs := "bin|boot|dev|etc|home|lib|lib32|lib64|libx32|media|mnt|opt|proc|root|run|sbin|snap|srv|sys|tmp|usr|var"

# "/", "//", "/.", "/etc", "/etc/", "/usr/." …
rm_system_path(a) if regex.match(`^/+(\.?/*)*$`, a)

rm_system_path(a) if regex.match(concat("", [`^/+(\./+)*(`, system_dirs, `)(/+\.?)*/*$`]), a)

# A glob in the first component ("/*", "/e*", "/{etc,usr}") may match any of them.
rm_system_path(a) if regex.match(`^/+[^/]*[*?\[{]`, a)

# A path through "..": where it ends is the target's to resolve.
rm_system_path(a) if regex.match(`^/.*(^|/)\.\.(/|$)`, a)

# A glob right under a system directory ("/usr/*", "/etc/*.d") empties it.
rm_system_path(a) if regex.match(concat("", [`^/+(\./+)*(`, system_dirs, `)(/+\.?)*/+[^/]*[*?\[{][^/]*/*$`]), a)

violations contains violation(
	"agate.ssh.deny_rm_system", "deny_rm_system", true,
	concat("", ["rm -r of ", json.marshal(a), " ", ssh_where(c), " would delete a system directory"]),
) if {
	some c in ssh_commands
	c.name == "rm"
	rm_recursive(c)
	some a in c.args
	not startswith(a, "-")
	rm_system_path(a)
}

# find's start paths: its arguments before the expression (which starts at "-…", "(", "!" or ",").
find_expression_start(a) if startswith(a, "-")

find_expression_start(a) if a in {"(", "!", ","}

find_roots(c) := roots if {
	firsts := [i | some i, a in c.args; find_expression_start(a)]
	count(firsts) > 0
	roots := array.slice(c.args, 0, min(firsts))
}

find_roots(c) := c.args if {
	count([i | some i, a in c.args; find_expression_start(a)]) == 0
}

# What a find does to each file it finds that deletes it: -delete, or -exec/-execdir/-ok/-okdir of rm, unlink, shred.
find_deletes(c) if "-delete" in c.args

find_deletes(c) if {
	some i, a in c.args
	a in {"-exec", "-execdir", "-ok", "-okdir"}
	deleting_program(c.args[i + 1])
}

deleting_program(p) if p in {"rm", "unlink", "shred"}

deleting_program(p) if {
	some n in {"rm", "unlink", "shred"}
	endswith(p, concat("", ["/", n]))
}

violations contains violation(
	"agate.ssh.deny_rm_system", "deny_rm_system", true,
	concat("", ["find ", root, " ", ssh_where(c), " deletes what it finds under a system directory"]),
) if {
	some c in ssh_commands
	c.name == "find"
	find_deletes(c)
	some root in find_roots(c)
	rm_system_path(root)
	# Cleaning up /tmp (`find /tmp -mtime +7 -delete`) is what /tmp is for.
	not regex.match(`^/+tmp/*$`, root)
}

# rm -r of paths added when the line runs (xargs, parallel): they may be any directory.
violations contains violation(
	"agate.ssh.deny_rm_system", "deny_rm_system", true,
	concat("", ["rm -r ", ssh_where(c), " deletes paths only known when the line runs"]),
) if {
	some c in ssh_commands
	c.name == "rm"
	rm_recursive(c)
	c.dynamic
	some v in c.via
	v in {"xargs", "parallel"}
}

# `cd /etc && rm -rf *`: everything in a system directory, named relative to it after a cd there.
violations contains violation(
	"agate.ssh.deny_rm_system", "deny_rm_system", true,
	concat("", ["rm -r of ", json.marshal(a), " after cd ", dir, " ", ssh_where(c), " would empty a system directory"]),
) if {
	some d in ssh_commands
	d.name in {"cd", "pushd"}
	some dir in d.args
	rm_system_path(dir)
	some c in ssh_commands
	c.name == "rm"
	rm_recursive(c)
	some a in c.args
	not startswith(a, "-")
	rm_relative_everything(a)
}

# Relative paths that name the working directory itself or everything in it: ".", "..", "*", "./.*", "{a,b}*" …
rm_relative_everything(a) if regex.match(`^(\./+)*\.{1,2}/*$`, a)

rm_relative_everything(a) if regex.match(`^(\./+)*[^/]*[*?\[{][^/]*/*$`, a)

violations contains violation(
	"agate.ssh.deny_rm_system", "deny_rm_system", true,
	concat("", ["rm --no-preserve-root ", ssh_where(c), " is refused"]),
) if {
	some c in ssh_commands
	c.name == "rm"
	"--no-preserve-root" in c.args
}

violations contains violation(
	"agate.ssh.deny_mkfs", "deny_mkfs", true,
	concat("", [c.name, " ", ssh_where(c), " formats a file system"]),
) if {
	some c in ssh_commands
	mkfs_name(c.name)
}

mkfs_name(n) if n in {"mkfs", "mke2fs", "mkswap", "wipefs", "mkdosfs"}

mkfs_name(n) if startswith(n, "mkfs.")

harmless_devices := {"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty", "/dev/zero", "/dev/full"}

device_target(p) if {
	startswith(p, "/dev/")
	not p in harmless_devices
	not startswith(p, "/dev/fd/")
	not startswith(p, "/dev/pts/")
}

violations contains violation(
	"agate.ssh.deny_device_write", "deny_device_write", true,
	concat("", ["dd ", a, " ", ssh_where(c), " writes to a device"]),
) if {
	some c in ssh_commands
	c.name == "dd"
	some a in c.args
	startswith(a, "of=")
	device_target(substring(a, 3, -1))
}

violations contains violation(
	"agate.ssh.deny_device_write", "deny_device_write", true,
	concat("", [c.name, " ", a, " ", ssh_where(c), " writes to a device"]),
) if {
	some c in ssh_commands
	c.name in {"tee", "cp", "mv", "shred", "blkdiscard", "install", "rsync"}
	some a in c.args
	device_target(a)
}

violations contains violation(
	"agate.ssh.deny_device_write", "deny_device_write", true,
	concat("", ["the redirection ", r.op, " ", r.target, " ", ssh_where(c), " writes to a device"]),
) if {
	some c in ssh_commands
	some r in c.redirects
	r.op in {">", ">>", ">|", "&>", "&>>", "<>"}
	device_target(r.target)
}

power_names := {"shutdown", "reboot", "halt", "poweroff"}

violations contains violation(
	"agate.ssh.deny_power", "deny_power", true,
	concat("", [c.name, " ", ssh_where(c), " stops or restarts the host"]),
) if {
	some c in ssh_commands
	c.name in power_names
}

violations contains violation(
	"agate.ssh.deny_power", "deny_power", true,
	concat("", [c.name, " ", concat(" ", c.args), " ", ssh_where(c), " stops or restarts the host"]),
) if {
	some c in ssh_commands
	power_request(c)
}

# echo b > /proc/sysrq-trigger reboots at once.
power_request(c) if {
	some r in c.redirects
	regex.match(`^/+proc/+sysrq-trigger$`, r.target)
}

power_request(c) if {
	c.name in {"init", "telinit"}
	some a in c.args
	a in {"0", "6"}
}

power_request(c) if {
	c.name == "systemctl"
	some a in c.args
	a in {"poweroff", "reboot", "halt", "kexec", "emergency", "rescue"}
}

# "/etc/shadow", "/etc/./shadow", "etc/shadow" (from /), "../../etc/shadow", "/etc/../etc/gshadow-".
secret_path(p) if regex.match(`(^|/)etc/+((\.|\.\.|[^/]+/+\.\.)/+)*g?shadow-?$`, p)

secret_path(p) if regex.match(`(^|/)\.ssh/+id_[^/]*$`, p)

# A glob that may match one of them: "/etc/sh*", "/etc/{passwd,shadow}", "/root/.ssh/*".
secret_examples := ["/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/root/.ssh/id_rsa", "/root/.ssh/id_ed25519", "/home/user/.ssh/id_ecdsa"]

secret_glob(p) if {
	regex.match(`[*?\[{]`, p)
	some example in secret_examples
	glob.match(p, ["/"], example)
}

secret_glob(p) if {
	regex.match(`[*?\[{]`, p)
	regex.match(`(^|/)\.ssh/+[^/]*[*?\[{]`, p)
}

violations contains violation(
	"agate.ssh.deny_secret_read", "deny_secret_read", true,
	concat("", [c.name, " ", ssh_where(c), " names ", json.marshal(p), ", which holds secrets"]),
) if {
	some c in ssh_commands
	some p in array.concat(c.args, [r.target | some r in c.redirects])
	secret_path(ssh_arg_path(p))
	not endswith(p, ".pub")
}

violations contains violation(
	"agate.ssh.deny_secret_read", "deny_secret_read", true,
	concat("", [c.name, " ", ssh_where(c), " names ", json.marshal(p), ", a pattern that may match a file holding secrets"]),
) if {
	some c in ssh_commands
	c.glob
	some p in c.args
	secret_glob(ssh_arg_path(p))
}

# An argument as a path: "if=/etc/shadow" and "--file=/etc/shadow" name one too.
ssh_arg_path(p) := substring(p, indexof(p, "=") + 1, -1) if {
	regex.match(`^-*[a-zA-Z_-]+=`, p)
} else := p

downloaders := {"curl", "wget", "fetch", "aria2c"}

violations contains violation(
	"agate.ssh.deny_download_exec", "deny_download_exec", true,
	concat("", [d.name, " piped into ", s.name, " runs code fetched from the network"]),
) if {
	some d in ssh_commands
	d.name in downloaders
	some s in ssh_commands
	s.name in shell_names
	s.pipeline == d.pipeline
	s.stage > d.stage
}

approval_violations contains violation(
	"agate.ssh.approve_privileged", "approve_privileged", true,
	concat("", [c.name, " ", ssh_where(c), " runs a command with another user's privileges"]),
) if {
	some c in ssh_commands
	c.name in {"sudo", "doas", "su", "runuser", "pkexec"}
}

approval_violations contains violation(
	"agate.ssh.approve_service_stop", "approve_service_stop", true,
	concat("", [c.name, " ", concat(" ", c.args), " ", ssh_where(c), " stops or restarts a service"]),
) if {
	some c in ssh_commands
	service_stop(c)
}

service_stop(c) if {
	c.name == "systemctl"
	some a in c.args
	a in {"stop", "restart", "disable", "mask", "kill", "try-restart", "reload-or-restart"}
}

service_stop(c) if {
	c.name == "service"
	some a in c.args
	a in {"stop", "restart", "force-reload"}
}

approval_violations contains violation(
	"agate.ssh.approve_kill_init", "approve_kill_init", true,
	concat("", ["kill ", concat(" ", c.args), " ", ssh_where(c), " signals init (pid 1)"]),
) if {
	some c in ssh_commands
	c.name == "kill"
	"1" in c.args
}

approval_violations contains violation(
	"agate.ssh.approve_package_removal", "approve_package_removal", true,
	concat("", [c.name, " ", concat(" ", c.args), " ", ssh_where(c), " removes packages"]),
) if {
	some c in ssh_commands
	package_removal(c)
}

package_removal(c) if {
	c.name in {"apt", "apt-get", "aptitude", "yum", "dnf", "zypper"}
	some a in c.args
	a in {"remove", "purge", "autoremove", "erase", "rm"}
}

package_removal(c) if {
	c.name == "dpkg"
	some a in c.args
	regex.match(`^(-[a-zA-Z]*[rP]|--remove|--purge)$`, a)
}

package_removal(c) if {
	c.name == "rpm"
	some a in c.args
	regex.match(`^(-[a-zA-Z]*e|--erase)$`, a)
}

package_removal(c) if {
	c.name == "apk"
	"del" in c.args
}

package_removal(c) if {
	c.name == "pacman"
	some a in c.args
	regex.match(`^(-R[a-zA-Z]*|--remove)$`, a)
}
