#!/usr/bin/env bash
# Installs and starts what pull-agent's demo and tests need on a Debian 12
# machine with Go: Docker Engine (Debian's docker.io), git, iproute2, curl,
# gnupg and ssh-keygen (signed-commit tests), chromium (the status page
# test) and zsh (the completion script's check). Idempotent: anything
# already present is left alone.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,CI,GOFLAGS,GOPROXY,GOPATH,GOCACHE,GOMODCACHE "$0" "$@"
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v git >/dev/null 2>&1 || need+=(git)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v gpg >/dev/null 2>&1 || need+=(gnupg)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
# The zsh completion script is checked with zsh -n (internal/completion).
command -v zsh >/dev/null 2>&1 || need+=(zsh)
# The master's status page is tested in a real headless browser.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
  echo "setup: Go is not on the PATH (expected /usr/local/go/bin); install Go 1.26 first" >&2
  exit 1
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd"
  # No systemd on these machines: run the daemon in the background.
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "setup: dockerd did not come up; see /var/log/dockerd.log" >&2
    tail -20 /var/log/dockerd.log >&2 || true
    exit 1
  fi
fi
echo "setup: $(docker version --format 'Docker Engine {{.Server.Version}} (API {{.Server.APIVersion}})')"

# --- PostgreSQL (the master's store tests run against SQLite and PostgreSQL) ---
# Debian's postgresql; no systemd here, so the cluster is started with
# pg_ctlcluster. The tests connect over loopback as a throwaway role that may
# only create databases (each test run makes its own and drops it); override
# with PULL_AGENT_TEST_POSTGRES=postgres://… to use another server.
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "setup: installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  pg_createcluster "$(ls /usr/lib/postgresql | sort -n | tail -1)" main >/dev/null
fi
read -r pg_ver pg_name pg_port pg_status _ < <(pg_lsclusters -h | head -1)
if [ "$pg_status" != "online" ]; then
  echo "setup: starting PostgreSQL $pg_ver/$pg_name"
  pg_ctlcluster "$pg_ver" "$pg_name" start
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p "$pg_port" && break
  sleep 1
done
if ! pg_isready -q -h 127.0.0.1 -p "$pg_port"; then
  echo "setup: PostgreSQL did not come up on 127.0.0.1:$pg_port" >&2
  exit 1
fi
runuser -u postgres -- psql -q -p "$pg_port" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pull_agent_test') THEN
    CREATE ROLE pull_agent_test LOGIN CREATEDB PASSWORD 'pull_agent_test';
  END IF;
END $$;
SQL
echo "setup: PostgreSQL $pg_ver on 127.0.0.1:$pg_port (test role pull_agent_test)"
