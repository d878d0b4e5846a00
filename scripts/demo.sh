#!/usr/bin/env bash
# The whole pull-agent loop on this one machine, with nothing leaving it:
#
#   1. a simulated LAN: a veth pair (the worker's decoy NIC) and a network
#      namespace playing a machine on 198.51.100.0/24 (a documentation range);
#   2. a fleet repository made from examples/fleet-repo, with the decoy
#      binary compiled into every build context, as a bare git remote;
#   3. the reference master recording reports in SQLite;
#   4. the agent as worker-a: plan, then once, converging real containers;
#   5. banners grabbed from the LAN machine, the master's record, then a
#      new commit that changes one decky, and the pass that touches only it.
#
# Everything is removed at the end (DEMO_KEEP=1 keeps it running).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,GOFLAGS,GOPROXY,GOPATH,GOCACHE,GOMODCACHE,DEMO_KEEP "$0" "$@"
fi
scripts/setup.sh

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building pull-agent and the decoy"
mkdir -p bin
go build -o bin/pull-agent ./cmd/pull-agent
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/decoy ./cmd/decoy
PA=$PWD/bin/pull-agent

WORK=$(mktemp -d /tmp/pull-agent-demo.XXXXXX)
PARENT=pademo0 PEER=pademo1 NS=pademo-lan
SUBNET=198.51.100.0/24 GW=198.51.100.1 HOSTIP=198.51.100.2 LANHOST=198.51.100.3
MASTER=127.0.0.1:8770
MASTER_PID=

cleanup() {
  set +e
  if [ "${DEMO_KEEP:-0}" = 1 ]; then return; fi
  say "cleaning up"
  "$PA" reap --yes --host worker-a --network decnet_lan --state-dir "$WORK/state" --log-level warn
  [ -n "$MASTER_PID" ] && kill "$MASTER_PID" 2>/dev/null && wait "$MASTER_PID" 2>/dev/null
  ip link del "$PARENT" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

say "simulated LAN $SUBNET: $PARENT (worker, $HOSTIP) <-> namespace $NS (a LAN machine, $LANHOST)"
ip link del "$PARENT" 2>/dev/null || true
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip link add "$PARENT" type veth peer name "$PEER"
ip link set "$PEER" netns "$NS"
ip addr add "$HOSTIP/24" dev "$PARENT"
ip link set "$PARENT" up
ip -n "$NS" addr add "$LANHOST/24" dev "$PEER"
ip -n "$NS" link set "$PEER" up
ip -n "$NS" link set lo up

say "fleet repository from examples/fleet-repo (decoy compiled into each build context)"
cp -r examples/fleet-repo "$WORK/work"
rm -f "$WORK/work/.gitignore"
find "$WORK/work" -name Dockerfile -execdir cp "$PWD/bin/decoy" ./decoy \;
export GIT_CONFIG_GLOBAL=/dev/null GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.org GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.org
git -C "$WORK/work" init -q -b main
git -C "$WORK/work" add -A
git -C "$WORK/work" commit -qm "example fleet"
git clone -q --bare "$WORK/work" "$WORK/fleet.git"
"$PA" validate "$WORK/work"

say "reference master on http://$MASTER"
"$PA" master --listen "$MASTER" --db "$WORK/master.db" --insecure-no-auth --log-level warn &
MASTER_PID=$!
sleep 1

AGENT=(--repo "file://$WORK/fleet.git" --host worker-a --state-dir "$WORK/state"
       --interface "$PARENT" --gateway "$GW" --steady-interval 500ms)

say "pull-agent plan: worker-a's deckies relocalized onto this LAN"
"$PA" plan "${AGENT[@]}" --log-level warn || true

say "pull-agent once: converge"
"$PA" once "${AGENT[@]}" --master "http://$MASTER" --master-insecure

say "containers (Compose project decnet)"
docker ps --filter label=io.pull-agent.owner=worker-a --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}'

ipof() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
grab() { # decky port [request]
  local ip; ip=$(ipof "$1")
  printf '%-12s %-15s :%-4s ' "$1" "$ip" "$2"
  ip netns exec "$NS" timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1
    [ -n "$2" ] && printf "$2" >&3
    IFS= read -r -t 3 line <&3 && printf "%s\n" "${line%$'"'"'\r'"'"'}"' "$ip" "$2" "${3:-}" 2>/dev/null || echo "(no answer)"
}
say "banners, as a machine on the LAN sees them"
grab files-01 22 ""
grab web-01 80 'GET / HTTP/1.0\r\n\r\n'
grab web-01 21 ""
grab mail-01 25 ""
grab iot-cam-01 23 ""

say "what the master recorded"
curl -s "http://$MASTER/api/v1/lifecycle?format=table"

say "a new commit: iot-cam-01 also gets ssh; one pass touches only that decky"
sed -i 's/services: \[telnet\]/services: [telnet, ssh]/' "$WORK/work/hosts/worker-a.yaml"
git -C "$WORK/work" commit -qam "iot-cam-01: add ssh"
git -C "$WORK/work" push -q "$WORK/fleet.git" HEAD:main
"$PA" plan "${AGENT[@]}" --log-level warn || true
"$PA" once "${AGENT[@]}" --master "http://$MASTER" --master-insecure --log-level warn
grab iot-cam-01 22 ""

say "the master's view of worker-a (also as a page: http://$MASTER/)"
curl -s "http://$MASTER/api/v1/deckies?host=worker-a&format=table"

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  say "DEMO_KEEP=1: everything stays up (master pid $MASTER_PID, state $WORK/state)"
fi
