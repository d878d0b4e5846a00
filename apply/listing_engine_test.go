package apply

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"path/filepath"
	"slices"
	"strings"
	stdsync "sync"
	"testing"

	"github.com/docker/compose/v2/pkg/api"
	"github.com/docker/docker/api/types/filters"
)

// TestComposeListsOneDeckyPerUp is issue 15's scaling fault, shown by
// behaviour rather than time: while n deckies are created in one pass,
// every container listing Compose makes (by project label, in create and
// again in start) names one decky's own project and returns that decky's
// containers alone, so the work per decky does not grow with the fleet.
// With one project shared by every decky, each listing returned the
// containers of every decky created so far: n² in all.
func TestComposeListsOneDeckyPerUp(t *testing.T) {
	f := newEngineFleet(t)
	const n = 4
	var hf strings.Builder
	hf.WriteString("deckies:\n")
	var want, projects []string
	for i := range n {
		name := fmt.Sprintf("%s-d%d", f.owner, i)
		fmt.Fprintf(&hf, "  - name: %s\n    services: [ssh]\n", name)
		want = append(want, name+":create/deploy base svc=ssh")
		projects = append(projects, DeckyProject(f.shared, name))
	}
	specs := f.render(hf.String())
	// Images are built directly: only the ups go through the spy.
	f.buildImages(f.applier(f.eng), specs)
	spy := newListingSpy(t)
	f.pass(f.applier(f.engine()), specs, strings.Join(want, "; "))

	per := map[string]int{}
	for _, l := range spy.get() {
		t.Logf("Compose listed project %s: %d containers", l.project, l.n)
		if !slices.Contains(projects, l.project) {
			t.Errorf("Compose listed project %s (%d containers), not one decky's own", l.project, l.n)
		}
		if l.n > 2 {
			t.Errorf("a listing of project %s returned %d containers; a decky has 2", l.project, l.n)
		}
		per[l.project]++
	}
	for _, p := range projects {
		if per[p] == 0 {
			t.Errorf("no listing of project %s seen: the spy missed Compose's calls", p)
		}
	}
}

// listingSpy is a Docker API proxy (DOCKER_HOST is pointed at it for the
// test) that records every container listing filtered by a Compose
// project label, and how many containers it returned.
type listingSpy struct {
	mu   stdsync.Mutex
	seen []listing
}

type listing struct {
	project string
	n       int
}

func (s *listingSpy) get() []listing {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

func newListingSpy(t *testing.T) *listingSpy {
	t.Helper()
	upstream := "/var/run/docker.sock"
	if h, ok := strings.CutPrefix(os.Getenv("DOCKER_HOST"), "unix://"); ok {
		upstream = h
	}
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &listingSpy{}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme, r.Out.URL.Host = "http", "docker"
		},
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", upstream)
		}},
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			if !strings.HasSuffix(resp.Request.URL.Path, "/containers/json") {
				return nil
			}
			args, err := filters.FromJSON(resp.Request.URL.Query().Get("filters"))
			if err != nil {
				return err
			}
			project := ""
			for _, v := range args.Get("label") {
				if p, ok := strings.CutPrefix(v, api.ProjectLabel+"="); ok {
					project = p
				}
			}
			if project == "" {
				return nil // the agent's own listing of everything
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			var list []json.RawMessage
			if err := json.Unmarshal(body, &list); err != nil {
				return err
			}
			s.mu.Lock()
			s.seen = append(s.seen, listing{project, len(list)})
			s.mu.Unlock()
			return nil
		},
	}
	srv := &http.Server{Handler: rp}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	t.Setenv("DOCKER_HOST", "unix://"+sock)
	return s
}
