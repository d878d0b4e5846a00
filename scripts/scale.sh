#!/usr/bin/env bash
# Scale measurements of issue 15, each beside a baseline measured in the
# same run (docs/benchmarks.md, "Agent"). Sections, run all by default or
# name some: scripts/scale.sh start bigrepo apply noop fleet
#
#   start    process start of version, validate and a go "hello" (the
#            floor): wall, CPU and peak RSS (/usr/bin/time -v, median of
#            RUNS), and GODEBUG=inittrace=1 summed per module
#   bigrepo  a fleet repository of 2,000 host files and 10,000 commits:
#            shallow clone time and disk against a full clone, and the
#            whole repository's validate time (goal < 2 s)
#   apply    BenchmarkCreateDeckiesVsRawAPI at SCALE_DECKIES (default
#            "10 50"; add 250 when the machine has the minutes): agent/raw,
#            and the CPU of the agent and of the Engine in each phase.
#            SCALE_PROFILE=DIR (absolute) writes a CPU profile and an execution trace
#            of the agent pass (DIR/<n>/agent.pprof, agent.trace)
#   noop     BenchmarkNoOpOnceAtScale at the same sizes: a no-op `once`
#            process against git ls-remote + one container listing, and
#            the daemon's RSS after converging (idle-rss), and one
#            debug `once`'s per-step times. SCALE_HOLD=FILE keeps the
#            converged world until FILE is removed (the once command
#            line is written into it), for perf or strace by hand
#   fleet    BenchmarkFleetManyAgentsOneRemote: FLEET_AGENTS (default 200)
#            in-process agents (fake Engine) polling one git http-backend
#            process every FLEET_INTERVAL (default 20s): the remote's CPU
#            per no-op poll against one git ls-remote, and push-to-applied
#            time polling and with the webhook
#
# These machines are shared: read the medians and ratios, not one run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,GOFLAGS,GOPROXY,GOPATH,GOCACHE,GOMODCACHE,RUNS,SCALE_DECKIES,SCALE_PROFILE,SCALE_HOLD,FLEET_AGENTS,FLEET_INTERVAL,PULL_AGENT_BASE_BIN "$0" "$@"
fi
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
RUNS=${RUNS:-7}
SCALE_DECKIES=${SCALE_DECKIES:-10 50}
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(start bigrepo apply noop fleet)

work=$(mktemp -d /tmp/pull-agent-scale.XXXXXX)
trap 'rm -rf "$work"' EXIT
go build -o "$work/pull-agent" ./cmd/pull-agent
PA=$work/pull-agent
export PULL_AGENT_BIN=$PA # the benchmarks run this binary, not the test binary

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# measure NAME CMD...: median wall s, cpu s and peak RSS MB over RUNS runs
measure() {
  local name=$1; shift
  local f=$work/m.$$
  : >"$f"
  "$@" >/dev/null 2>&1 || true # warm-up (page cache)
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -f '%e %U %S %M' -o "$f.1" "$@" >/dev/null 2>&1 || true
    cat "$f.1" >>"$f"
  done
  printf '%-34s wall %6.3f s  cpu %6.3f s  peak RSS %6.1f MB   (median of %d)\n' "$name" \
    "$(awk '{print $1}' "$f" | median)" "$(awk '{print $2+$3}' "$f" | median)" "$(awk '{print $4/1024}' "$f" | median)" "$RUNS"
}

section_start() {
  echo "== start: process start, same run, median of $RUNS"
  mkdir -p "$work/hello"
  printf 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello") }\n' >"$work/hello/main.go"
  printf 'module hello\n\ngo 1.26\n' >"$work/hello/go.mod"
  (cd "$work/hello" && go build -o "$work/hello-bin" .)
  echo "binary size: $(du -m "$PA" | cut -f1) MB"
  measure "go hello (floor)" "$work/hello-bin"
  measure "pull-agent version" "$PA" version
  measure "pull-agent validate examples" "$PA" validate examples/fleet-repo
  echo "-- GODEBUG=inittrace=1 of pull-agent version, per module (median of $RUNS):"
  for i in $(seq "$RUNS"); do GODEBUG=inittrace=1 "$PA" version 2>"$work/it.$i" >/dev/null; done
  python3 - "$work"/it.* <<'EOF'
import sys, re, statistics, collections
runs = []
for f in sys.argv[1:]:
    d = {}
    for line in open(f):
        m = re.match(r'init (\S+) @\S+ ms, ([\d.]+) ms clock, (\d+) bytes', line)
        if m:
            d[m.group(1)] = (float(m.group(2)), int(m.group(3)))
    runs.append(d)
def group(p):
    parts = p.split('/')
    if '.' not in parts[0]:
        return 'std'
    return '/'.join(parts[:3] if parts[0] == 'github.com' else parts[:2])
pk = set().union(*runs)
g = collections.defaultdict(lambda: [0.0, 0, 0])
for p in pk:
    x = g[group(p)]
    x[0] += statistics.median([r.get(p, (0, 0))[0] for r in runs])
    x[1] += statistics.median([r.get(p, (0, 0))[1] for r in runs])
    x[2] += 1
tot = [sum(v[0] for v in r.values()) for r in runs]
allocs = [sum(v[1] for v in r.values()) for r in runs]
print(f"packages with init work: {len(pk)}; init clock per run: median {statistics.median(tot):.0f} ms (min {min(tot):.0f}, max {max(tot):.0f}); init allocations {statistics.median(allocs)/1048576:.1f} MB")
print(f"{'module':48} {'pkgs':>4} {'init ms':>8} {'alloc KB':>9}")
for k, v in sorted(g.items(), key=lambda kv: -kv[1][1])[:15]:
    print(f"{k:48} {v[2]:4d} {v[0]:8.1f} {v[1]/1024:9.0f}")
EOF
}

section_bigrepo() {
  echo "== bigrepo: 2,000 host files, 10,000 commits"
  local repo=$work/big.git
  git init -q --bare -b main "$repo"
  python3 - "$PWD/examples/fleet-repo" <<'EOF' | git -C "$repo" fast-import --quiet
import os, sys
src = sys.argv[1]
out = sys.stdout.buffer
def blob(path, data):
    out.write(b"M 100644 inline " + path.encode() + b"\n" + b"data %d\n" % len(data) + data + b"\n")
def host(i, rev):
    # 4 deckies per host; rev changes one decky's hostname
    lines = [f"# worker w{i:04d} (rev {rev})", "deckies:"]
    for d in range(4):
        lines += [f"  - name: w{i:04d}-d{d}", "    services: [ssh, http]", f"    hostname: H{i:04d}-{d}-{rev}"]
    return ("\n".join(lines) + "\n").encode()
t = 1700000000
out.write(b"commit refs/heads/main\ncommitter bench <bench@example.org> %d +0000\ndata 5\nfleet\n" % t)
for root, dirs, files in os.walk(src):
    for f in files:
        p = os.path.join(root, f)
        rel = os.path.relpath(p, src)
        if rel.startswith("hosts/"):
            continue
        blob(rel, open(p, "rb").read())
for i in range(2000):
    blob(f"hosts/w{i:04d}.yaml", host(i, 0))
for c in range(1, 10000):
    t += 60
    i = c % 2000
    out.write(b"commit refs/heads/main\ncommitter bench <bench@example.org> %d +0000\ndata 6\nchange\n" % t)
    blob(f"hosts/w{i:04d}.yaml", host(i, c))
out.write(b"done\n")
EOF
  echo "commits: $(git -C "$repo" rev-list --count main), host files: $(git -C "$repo" ls-tree --name-only main hosts/ | wc -l)"
  measure "git clone --depth 1 (new worker)" sh -c "rm -rf $work/shallow && git clone -q --depth 1 --no-checkout file://$repo $work/shallow"
  echo "disk: shallow clone $(du -sm "$work/shallow" | cut -f1) MB (.git, no checkout); the remote with all history $(du -sm "$repo" | cut -f1) MB"
  git clone -q --depth 1 file://"$repo" "$work/tree"
  "$PA" validate "$work/tree" 2>&1 | tail -1
  measure "pull-agent validate (2,000 hosts)" "$PA" validate "$work/tree"
  measure "pull-agent validate examples" "$PA" validate examples/fleet-repo
}

section_apply() {
  for n in $SCALE_DECKIES; do
    echo "== apply at $n deckies (agent pass vs raw Engine API, same containers, same parallelism)"
    SCALE_N=$n SCALE_PROFILE=${SCALE_PROFILE:+$SCALE_PROFILE/$n} go test -run '^$' -bench '^BenchmarkCreateDeckiesVsRawAPI$' -benchtime 1x -count 1 -timeout 60m ./cmd/pull-agent | grep -E '^(Benchmark|ok|FAIL|---|panic)|_test.go:[0-9]+:'
  done
}

section_noop() {
  for n in $SCALE_DECKIES; do
    echo "== no-op once at $n deckies (process) vs git ls-remote + one container listing; daemon idle RSS"
    SCALE_N=$n go test -run '^$' -bench '^BenchmarkNoOpOnceAtScale$' -benchtime 5x -count 1 -timeout 60m ./cmd/pull-agent | grep -E '^(Benchmark|ok|FAIL|---|panic)|_test.go:[0-9]+:'
  done
}

section_fleet() {
  echo "== fleet: ${FLEET_AGENTS:-200} agents polling one git http-backend every ${FLEET_INTERVAL:-20s} (in-process agents with a fake Engine; the remote a process of its own)"
  FLEET_AGENTS=${FLEET_AGENTS:-200} FLEET_INTERVAL=${FLEET_INTERVAL:-20s} go test -run '^$' -bench '^BenchmarkFleetManyAgentsOneRemote$' -benchtime 1x -count 1 -timeout 60m ./cmd/pull-agent | grep -E '^(Benchmark|ok|FAIL|---|panic)|_test.go:[0-9]+:'
}

for s in "${sections[@]}"; do
  echo "-- $(date -u +%H:%M:%S) load average $(cut -d' ' -f1-3 /proc/loadavg) (2 cores: $(nproc))"
  "section_$s"
  echo "-- $(date -u +%H:%M:%S) load average $(cut -d' ' -f1-3 /proc/loadavg) after $s"
done
