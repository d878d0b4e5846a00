#!/usr/bin/env bash
# Checks the systemd units with systemd-analyze verify (their ExecStart
# pointed at a stand-in executable). Says so and succeeds when
# systemd-analyze is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
# A decommission ends with exit 0: the daemon's unit must never restart it,
# even under a drop-in with Restart=always.
if ! grep -Eq '^RestartPreventExitStatus=(.* )?0( |$)' packaging/pull-agent.service; then
  echo "packaging/verify.sh: pull-agent.service must list 0 (decommissioned) in RestartPreventExitStatus"; exit 1
fi
if ! command -v systemd-analyze >/dev/null; then
  echo "packaging/verify.sh: systemd-analyze not installed; units not verified"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp /bin/true "$tmp/pull-agent" # the units are checked, not the binary
for u in pull-agent.service pull-agent-once.service pull-agent-once.timer; do
  sed "s#/usr/local/bin/pull-agent#$tmp/pull-agent#" "packaging/$u" >"$tmp/$u"
done
# Units that the check environment lacks (docker.service) are not errors of ours.
out=$(cd "$tmp" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no ./pull-agent.service ./pull-agent-once.service ./pull-agent-once.timer 2>&1 || true)
bad=$(grep -vE "docker\.service|network-online|^$" <<<"$out" || true)
if [ -n "$bad" ]; then echo "$out"; exit 1; fi
echo "packaging/verify.sh: units verified"
