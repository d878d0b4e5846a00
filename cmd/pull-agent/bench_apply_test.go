package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"sort"
	"strconv"
	"strings"
	stdsync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/reaper"
)

// BenchmarkCreateDeckiesVsRawAPI creates SCALE_N deckies (default 10;
// scripts/scale.sh runs 10, 50 and 250) of three containers each (base, ssh, http) with a full agent pass (sync, parse, detect,
// render, diff, Compose, one steady-state sample per container) and,
// interleaved in the same run, creates and starts the very same
// containers directly through the Docker API, with the same parallelism
// and one inspect per container. The metric agent/raw is the claim:
// target <= 1.1 (issue 15), flat across sizes.
//
// Beside the wall times it reports where the CPU went in each phase: this
// process's (the agent's work in the agent phase, the client's in the
// raw one) and the Engine's (dockerd, containerd, the shims and runc,
// read from /proc; shared with anything else using the Engine). With
// SCALE_PROFILE=DIR it writes a CPU profile (agent.pprof) and an
// execution trace (agent.trace) of the agent pass alone, for
// `go tool pprof` and `go tool trace`.
func BenchmarkCreateDeckiesVsRawAPI(b *testing.B) {
	w, deckies := scaleFleet(b)
	n := len(deckies)
	// The warm-up builds the images with one decky of the same services:
	// at 250 deckies a full-size warm-up would be a third full create.
	w.commit("warm-up", deckies[:1], nil)
	a := w.newRunAgent(b, w.repo.FileURL(), "--probe=false", "--steady-samples", "1", "--steady-interval", "50ms", "--parallel", "4")
	ctx := context.Background()
	docker := testDocker(b)
	if res, err := a.Pass(ctx, agent.PassOptions{Full: true}); err != nil || res.Failed != 0 {
		b.Fatalf("warm-up pass (builds the images): %+v %v", res, err)
	}
	w.commit(fmt.Sprintf("%d deckies", n), deckies, nil)
	var tmpl []rawDecky // the agent's containers, captured after its first pass
	teardown := func() {
		cs, err := w.eng.ListContainers(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for d, list := range reaper.Orphans(cs, w.host, func(string) bool { return false }) {
			if err := reaper.RemoveDecky(ctx, w.eng, list); err != nil {
				b.Fatalf("teardown %s: %v", d, err)
			}
		}
	}
	var agentT, rawT, agentCPU, rawCPU, agentEng, rawEng time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		teardown()
		stop := startProfile(b, i == 0)
		b.StartTimer()
		t0, c0, e0 := time.Now(), selfCPU(b), engineCPU()
		res, err := a.Pass(ctx, agent.PassOptions{Full: true})
		agentT += time.Since(t0)
		agentCPU += selfCPU(b) - c0
		agentEng += engineCPU().since(e0)
		b.StopTimer()
		stop()
		if err != nil || res.Failed != 0 || len(res.Results) != n {
			b.Fatalf("agent pass: %+v %v", res, err)
		}
		if tmpl == nil {
			tmpl = captureDeckies(b, docker, w)
		}
		if len(tmpl) != n {
			b.Fatalf("captured %d deckies, want %d", len(tmpl), n)
		}
		teardown()
		b.StartTimer()
		t0, c0, e0 = time.Now(), selfCPU(b), engineCPU()
		rawCreate(b, docker, w.net, tmpl, 4)
		rawT += time.Since(t0)
		rawCPU += selfCPU(b) - c0
		rawEng += engineCPU().since(e0)
	}
	b.StopTimer()
	teardown()
	per := func(d time.Duration) float64 { return float64(d.Milliseconds()) / float64(b.N) }
	b.ReportMetric(per(agentT), "agent-ms")
	b.ReportMetric(per(rawT), "raw-ms")
	b.ReportMetric(float64(agentT)/float64(rawT), "agent/raw")
	b.ReportMetric(per(agentCPU), "agent-cpu-ms")
	b.ReportMetric(per(rawCPU), "raw-client-cpu-ms")
	b.ReportMetric(per(agentEng), "engine-cpu-ms-agent")
	b.ReportMetric(per(rawEng), "engine-cpu-ms-raw")
	b.ReportMetric(float64(n), "deckies")
}

// startProfile starts a CPU profile and an execution trace into
// SCALE_PROFILE (when set and on) and returns what stops them.
func startProfile(b *testing.B, on bool) func() {
	dir := os.Getenv("SCALE_PROFILE")
	if dir == "" || !on {
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	cpu, err := os.Create(filepath.Join(dir, "agent.pprof"))
	if err != nil {
		b.Fatal(err)
	}
	tr, err := os.Create(filepath.Join(dir, "agent.trace"))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		b.Fatal(err)
	}
	if err := trace.Start(tr); err != nil {
		b.Fatal(err)
	}
	return func() {
		trace.Stop()
		pprof.StopCPUProfile()
		cpu.Close()
		tr.Close()
	}
}

// selfCPU is this process's user and system CPU so far.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuByPID is the CPU (own and reaped children's) of a set of processes.
type cpuByPID map[int]time.Duration

// engineCPU reads the CPU of every dockerd, containerd, containerd-shim
// and runc process now running.
func engineCPU() cpuByPID {
	out := cpuByPID{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", d.Name(), "comm"))
		if err != nil {
			continue
		}
		switch c := strings.TrimSpace(string(comm)); {
		case c == "dockerd", c == "containerd", c == "runc", strings.HasPrefix(c, "containerd-shim"):
			if cpu, err := procCPU(pid); err == nil {
				out[pid] = cpu
			}
		}
	}
	return out
}

// since is the CPU spent between then and now: processes that started in
// between count from zero (a new container's shim); the CPU of processes
// that ended in between is lost, which undercounts only short runc calls
// that nobody reaped into a process still running.
func (now cpuByPID) since(then cpuByPID) time.Duration {
	var d time.Duration
	for pid, c := range now {
		d += c - then[pid]
	}
	return d
}

// procCPU is utime+stime+cutime+cstime of a process, from /proc/PID/stat
// (clock ticks of 10 ms: USER_HZ is 100 on Linux).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: fields count from ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, x := range f[11:15] { // utime stime cutime cstime (fields 14-17)
		v, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

type rawContainer struct {
	name string
	cfg  *container.Config
	host *container.HostConfig
	ep   *network.EndpointSettings // base only
}

type rawDecky struct {
	base     rawContainer
	services []rawContainer
}

// captureDeckies records the configuration of the containers the agent
// made, so the baseline creates exactly the same ones.
func captureDeckies(b *testing.B, docker *client.Client, w *world) []rawDecky {
	ctx := context.Background()
	byDecky := map[string]*rawDecky{}
	for name, c := range w.owned() {
		in, err := docker.ContainerInspect(ctx, c.ID)
		if err != nil {
			b.Fatal(err)
		}
		d := byDecky[c.Decky()]
		if d == nil {
			d = &rawDecky{}
			byDecky[c.Decky()] = d
		}
		hc := *in.HostConfig
		rc := rawContainer{name: name, cfg: in.Config, host: &hc}
		if c.Labels[engine.LabelRole] == engine.RoleBase {
			ep := in.NetworkSettings.Networks[w.net]
			rc.ep = &network.EndpointSettings{IPAMConfig: ep.IPAMConfig} // the MAC is in Config (API 1.41)
			d.base = rc
		} else {
			// Inspect reports the hostname a service inherits from its
			// base; creating with it and a container: network mode is refused.
			cfg := *in.Config
			cfg.Hostname, cfg.Domainname = "", ""
			rc.cfg = &cfg
			d.services = append(d.services, rc)
		}
	}
	var out []rawDecky
	for _, d := range byDecky {
		out = append(out, *d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].base.name < out[j].base.name })
	return out
}

// rawCreate creates and starts the deckies directly, parallel deckies at
// a time: base first, then its services together, then one inspect each.
func rawCreate(b *testing.B, docker *client.Client, netName string, deckies []rawDecky, parallel int) {
	ctx := context.Background()
	sem := make(chan struct{}, parallel)
	var wg stdsync.WaitGroup
	errs := make(chan error, len(deckies)*4)
	create := func(c rawContainer, nc *network.NetworkingConfig) string {
		resp, err := docker.ContainerCreate(ctx, c.cfg, c.host, nc, nil, c.name)
		if err == nil {
			err = docker.ContainerStart(ctx, resp.ID, container.StartOptions{})
		}
		if err == nil {
			_, err = docker.ContainerInspect(ctx, resp.ID)
		}
		if err != nil {
			errs <- fmt.Errorf("%s: %w", c.name, err)
		}
		return resp.ID
	}
	for _, d := range deckies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			id := create(d.base, &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: d.base.ep}})
			var swg stdsync.WaitGroup
			for _, s := range d.services {
				swg.Add(1)
				go func() {
					defer swg.Done()
					hc := *s.host
					hc.NetworkMode = container.NetworkMode("container:" + id)
					create(rawContainer{name: s.name, cfg: s.cfg, host: &hc}, nil)
				}()
			}
			swg.Wait()
		}()
	}
	wg.Wait()
	close(errs)
	var msgs []string
	for err := range errs {
		msgs = append(msgs, err.Error())
	}
	if len(msgs) > 0 {
		b.Fatal(strings.Join(msgs, "\n"))
	}
}
