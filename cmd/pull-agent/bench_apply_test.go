package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/testlan"
	"github.com/decnet/pull-agent/reaper"
)

// BenchmarkCreateDeckiesVsRawAPI creates SCALE_N deckies (default 10;
// scripts/scale.sh runs 10, 50 and 250) of three containers each (base, ssh, http) with a full agent pass (sync, parse, detect,
// render, diff, Compose, one steady-state sample per container) and,
// interleaved in the same run, creates and starts the very same
// containers directly through the Docker API, with the same parallelism
// and one inspect per container. The metric agent/raw is the claim:
// target <= 1.1 (issue 15), flat across sizes.
func BenchmarkCreateDeckiesVsRawAPI(b *testing.B) {
	n := scaleN(b)
	w := scaleWorld(b, n)
	w.master = ""
	var deckies [][2]string
	for i := 0; i < n; i++ {
		deckies = append(deckies, [2]string{fmt.Sprintf("d%03d", i), "ssh,http"})
	}
	w.commit(fmt.Sprintf("%d deckies", n), deckies, nil)
	a := w.newRunAgent(b, w.repo.FileURL(), "--probe=false", "--steady-samples", "1", "--steady-interval", "50ms", "--parallel", "4")
	ctx := context.Background()
	docker := testDocker(b)
	if res, err := a.Pass(ctx, agent.PassOptions{Full: true}); err != nil || res.Failed != 0 {
		b.Fatalf("warm-up pass (builds the images): %+v %v", res, err)
	}
	tmpl := captureDeckies(b, docker, w)
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
	var agentT, rawT time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		teardown()
		b.StartTimer()
		t0 := time.Now()
		res, err := a.Pass(ctx, agent.PassOptions{Full: true})
		agentT += time.Since(t0)
		if err != nil || res.Failed != 0 || len(res.Results) != n {
			b.Fatalf("agent pass: %+v %v", res, err)
		}
		b.StopTimer()
		teardown()
		b.StartTimer()
		t0 = time.Now()
		rawCreate(b, docker, w.net, tmpl, 4)
		rawT += time.Since(t0)
	}
	b.StopTimer()
	teardown()
	b.ReportMetric(float64(agentT.Milliseconds())/float64(b.N), "agent-ms")
	b.ReportMetric(float64(rawT.Milliseconds())/float64(b.N), "raw-ms")
	b.ReportMetric(float64(agentT)/float64(rawT), "agent/raw")
	b.ReportMetric(float64(n), "deckies")
}

// scaleN is the number of deckies of a scale benchmark: SCALE_N, default 10.
func scaleN(b *testing.B) int {
	n := 10
	if v := os.Getenv("SCALE_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > 250 {
			b.Fatalf("SCALE_N=%q: want 1 to 250", v)
		}
	}
	return n
}

// scaleWorld is a world whose LAN holds n deckies: a /26 up to 40, a /24
// beyond (250 deckies fill a /24 but for the gateway, worker and peer).
func scaleWorld(b *testing.B, n int) *world {
	if n <= 40 {
		return newWorld(b)
	}
	return newWorldLAN(b, testlan.Options{Bits: 24})
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
