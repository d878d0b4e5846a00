package apply

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/testlan"
	"github.com/decnet/pull-agent/relocalize"
)

// BenchmarkPlan250 renders 250 deckies with 3 services each and diffs them
// against 750 running containers (faked from the rendering, plus the 250
// bases), the work of `pull-agent plan` after the fetch. Target: < 50 ms.
// The baseline, measured in the same run, is one real container listing
// on the Engine, which every plan needs anyway.
func BenchmarkPlan250(b *testing.B) {
	var hf strings.Builder
	hf.WriteString("deckies:\n")
	addrs := map[string]relocalize.Assignment{}
	ip := netip.MustParseAddr("10.0.0.0")
	for i := 0; i < 250; i++ {
		name := fmt.Sprintf("d%03d", i)
		fmt.Fprintf(&hf, "  - name: %s\n    services: [ssh, http, ftp]\n    service_config: {ssh: {banner: \"SSH-2.0-%d\"}}\n", name, i)
		ip = ip.Next()
		addrs[name] = relocalize.Assignment{IP: ip, MAC: relocalize.MAC("w", name)}
	}
	fleet := strings.Replace(fleetYAML, "  http:\n", "  ftp:\n    image: \"decoys/ftp:1\"\n  http:\n", 1)
	f, err := desired.Load(fstest.MapFS{
		"fleet.yaml": {Data: []byte(fleet)}, "hosts/w.yaml": {Data: []byte(hf.String())},
		"services/http/Dockerfile": {Data: []byte("FROM scratch\n")},
	})
	if err != nil {
		b.Fatal(err)
	}
	h := f.Hosts["w"]
	net := testNet
	net.Subnet = netip.MustParsePrefix("10.0.0.0/22")
	var observed []engine.Container
	plan := func() ChangeSet {
		imgs, err := ResolveImages(context.Background(), f, h, tree1, nil)
		if err != nil {
			b.Fatal(err)
		}
		specs, errs := Render(RenderInput{Owner: "w", Project: "decnet", Fleet: f, Host: h, Network: net, Addresses: addrs, Images: imgs})
		if len(errs) > 0 {
			b.Fatal(errs)
		}
		return Diff(DiffInput{Owner: "w", Desired: specs, Observed: observed})
	}
	specs, _ := Render(RenderInput{Owner: "w", Project: "decnet", Fleet: f, Host: h, Network: net, Addresses: addrs, Images: mustImages(b, f, h)})
	observed = observe(specs...)
	if n := len(observed); n != 1000 {
		b.Fatalf("observed %d containers", n)
	}

	docker := testlan.RequireDocker(b)
	var tPlan, tList time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		cs := plan()
		tPlan += time.Since(t0)
		if c := cs.Count(); c[Unchanged] != 250 {
			b.Fatalf("plan: %v", c)
		}
		t0 = time.Now()
		if _, err := docker.ContainerList(context.Background(), container.ListOptions{All: true}); err != nil {
			b.Fatal(err)
		}
		tList += time.Since(t0)
	}
	b.ReportMetric(float64(tPlan.Microseconds())/float64(b.N)/1000, "plan-ms")
	b.ReportMetric(float64(tList.Microseconds())/float64(b.N)/1000, "list-ms")
	b.ReportMetric(float64(tPlan)/float64(tList), "plan/list")
}

func mustImages(b *testing.B, f *desired.Fleet, h *desired.Host) map[string]Image {
	imgs, err := ResolveImages(context.Background(), f, h, tree1, nil)
	if err != nil {
		b.Fatal(err)
	}
	return imgs
}
