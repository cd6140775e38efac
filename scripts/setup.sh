#!/usr/bin/env bash
# Installs what agate and its tests need on a Debian machine that has
# Node.js (for npm) and Go (to build opa and versitygw). Idempotent: when
# everything is there it checks and returns in about a second.
#
#   bash scripts/setup.sh           Bun, node_modules, opa, versitygw (S3), PostgreSQL server + psql,
#                                   cc + libpq headers, psycopg (in a venv)
#   bash scripts/setup.sh --bench   also pgbench and pgbouncer (scripts/bench)
#
# One line per step on stderr; the tools' own output is shown only when they fail.
set -euo pipefail

BUN_VERSION="1.4.5"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

BENCH=0
for arg in "$@"; do
  case "$arg" in
    --bench) BENCH=1 ;;
    -h | --help)
      sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "setup: unknown option $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

say() { echo "setup: $*" >&2; }
die() {
  echo "setup: $*" >&2
  exit 1
}

if [[ $EUID -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  SUDO=()
fi

# quietly CMD...: run CMD with its output kept aside; show it only if CMD fails.
quietly() {
  local log code=0
  log="$(mktemp)"
  "$@" >"$log" 2>&1 || code=$?
  if [[ $code -eq 0 ]]; then
    rm -f "$log"
    return 0
  fi
  sed 's/^/  | /' "$log" >&2
  rm -f "$log"
  return "$code"
}

APT_UPDATED=0
# apt_install PKG...: apt-get install, running apt-get update only if the first attempt fails.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* with your package manager"
  local apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0)
  if quietly "${apt[@]}" install --no-install-recommends "$@"; then return 0; fi
  if [[ $APT_UPDATED -eq 0 ]]; then
    say "apt-get install $* failed; running apt-get update and trying again"
    quietly "${apt[@]}" update || die "apt-get update failed (see above)"
    APT_UPDATED=1
    quietly "${apt[@]}" install --no-install-recommends "$@" && return 0
  fi
  die "apt-get install $* failed (see above)"
}

# --- Bun ---------------------------------------------------------------------
bun_version() { bun --version 2>/dev/null || true; }
if [[ "$(bun_version)" == 1.4.* ]]; then
  say "bun $(bun_version) ok"
else
  have="$(bun_version)"
  say "installing bun $BUN_VERSION with npm (found: ${have:-none})"
  command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js, or Bun $BUN_VERSION from https://bun.sh"
  quietly "${SUDO[@]}" npm install -g --no-fund --no-audit "bun@$BUN_VERSION" || die "npm install -g bun@$BUN_VERSION failed (see above)"
  if [[ "$(bun_version)" != 1.4.* ]]; then
    die "bun $BUN_VERSION was installed but 'bun' on PATH is '$(bun_version)'; put $(npm prefix -g)/bin first on PATH"
  fi
  say "bun $(bun_version) installed"
fi

# --- node_modules ------------------------------------------------------------
say "bun install --frozen-lockfile"
(cd "$ROOT" && quietly bun install --frozen-lockfile) || die "bun install --frozen-lockfile failed (see above); is bun.lock committed and up to date with package.json?"

# --- OPA ---------------------------------------------------------------------
opa="$(bash "$ROOT/scripts/opa.sh")" || die "scripts/opa.sh could not provide opa (see above)"
say "opa ok ($opa)"

# --- S3 server for tests and benchmarks: versitygw ---------------------------
s3="$(bash "$ROOT/scripts/s3.sh")" || die "scripts/s3.sh could not provide versitygw (see above)"
say "versitygw ok ($s3)"

# --- PostgreSQL --------------------------------------------------------------
pg_server() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
missing=()
pg_server || missing+=(postgresql)
command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
id -u postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
command -v openssl >/dev/null 2>&1 || missing+=(openssl) # the TLS tests make their certificate with it
# The libpq tests build small C clients: a C compiler, libpq's header and pg_config.
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v pg_config >/dev/null 2>&1 && [[ -f "$(pg_config --includedir)/libpq-fe.h" ]] || missing+=(libpq-dev)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv) # psycopg's venv, below
if [[ ${#missing[@]} -gt 0 ]]; then
  # shellcheck disable=SC2207
  missing=($(printf '%s\n' "${missing[@]}" | sort -u))
  say "installing ${missing[*]} with apt-get"
  apt_install "${missing[@]}"
  pg_server || die "the postgresql package is installed but no /usr/lib/postgresql/*/bin/postgres exists"
  command -v psql >/dev/null 2>&1 || die "postgresql-client is installed but psql is not on PATH"
fi
say "postgresql ok ($(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -1), $(psql --version))"

# --- OpenSSH: the SSH tests start their own sshd and drive ssh (password via sshpass) ---
missing=()
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v sshpass >/dev/null 2>&1 || missing+=(sshpass)
if [[ ${#missing[@]} -gt 0 ]]; then
  say "installing ${missing[*]} with apt-get"
  apt_install "${missing[@]}"
fi
say "openssh ok ($(ssh -V 2>&1))"

# --- psycopg, the Python driver some client tests run through agate ---------
# In its own venv under $AGATE_TOOLS/py; the pure-Python build uses the system libpq.
PSYCOPG_VERSION="3.3.9"
py="${AGATE_TOOLS:-$HOME/.local/agate-tools}/py"
if "$py/bin/python" -c "import psycopg, sys; sys.exit(psycopg.__version__ != '$PSYCOPG_VERSION')" 2>/dev/null; then
  say "psycopg $PSYCOPG_VERSION ok ($py)"
else
  say "installing psycopg $PSYCOPG_VERSION into $py"
  quietly python3 -m venv "$py" || die "python3 -m venv $py failed (see above)"
  quietly "$py/bin/pip" install --disable-pip-version-check -q "psycopg==$PSYCOPG_VERSION" || die "pip install psycopg==$PSYCOPG_VERSION failed (see above)"
fi

# --- benchmarks: pgbench, pgbouncer -------------------------------------------
if [[ $BENCH -eq 1 ]]; then
  # On Debian 12 pgbench ships in postgresql-NN (the server) with a wrapper in
  # postgresql-client-common; older releases put it in postgresql-contrib.
  if ! command -v pgbench >/dev/null 2>&1; then
    say "installing pgbench (postgresql-contrib) with apt-get"
    apt_install postgresql-contrib
    command -v pgbench >/dev/null 2>&1 || die "pgbench is still not on PATH after installing postgresql-contrib"
  fi
  say "pgbench ok ($(pgbench --version))"
  if ! command -v pgbouncer >/dev/null 2>&1 && [[ ! -x /usr/sbin/pgbouncer ]]; then
    say "installing pgbouncer with apt-get"
    apt_install pgbouncer
  fi
  say "pgbouncer ok ($( (command -v pgbouncer || echo /usr/sbin/pgbouncer) | head -1))"
fi

say "done"
