package desired

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"gopkg.in/yaml.v3"
)

// mergeBomb returns YAML for a merge-key bomb: levels mappings, each
// merging fan copies of the one before, so that reading the last one
// visits about fan^levels nodes. Every key is key: valid where the bomb is
// merged, so nothing but its size is wrong.
func mergeBomb(key, value string, fan, levels int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[&b0 {%s: %s}", key, value)
	for l := 1; l <= levels; l++ {
		refs := strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*b%d, ", l-1), fan), ", ")
		fmt.Fprintf(&b, ", &b%d {<<: [%s]}", l, refs)
	}
	b.WriteString("]")
	return b.String()
}

// hostileHost returns a host file of n deckies that each merge the same
// bomb (defined in the first), padded to at least size bytes.
func hostileHost(n, size int) string {
	var b strings.Builder
	b.WriteString("deckies:\n")
	fmt.Fprintf(&b, "  - name: d0\n    services: [ssh]\n    <<: &bomb %s\n", mergeBomb("hostname", "h", 10, 5))
	for i := 1; i < n || b.Len() < size; i++ {
		fmt.Fprintf(&b, "  - name: d%d\n    services: [ssh]\n    <<: *bomb\n", i)
	}
	return b.String()
}

// benignHost returns a plain host file of at least size bytes.
func benignHost(size int) string {
	var b strings.Builder
	b.WriteString("deckies:\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "  - name: d%d\n    services: [ssh]\n    hostname: host-%d\n    service_config: {ssh: {banner: \"SSH-2.0-%d\"}}\n", i, i, i)
	}
	return b.String()
}

// wantOneBudgetError checks that err is exactly one error, the budget's.
func wantOneBudgetError(t testing.TB, err error, file string) {
	t.Helper()
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("want the budget error, got %v", err)
	}
	if len(es) != 1 || es[0].File != file || !strings.Contains(es[0].Msg, "beyond its budget") && !strings.Contains(es[0].Msg, "nest more than") {
		t.Fatalf("want exactly one budget error in %s, got %d:\n%v", file, len(es), err)
	}
	if es[0].Line == 0 {
		t.Errorf("budget error has no line: %v", es[0])
	}
}

func TestLoadHostileRepositoriesRefused(t *testing.T) {
	manyFiles := map[string]string{}
	for i := 0; i < 200; i++ {
		manyFiles[fmt.Sprintf("hosts/w%03d.yaml", i)] = fmt.Sprintf(
			"deckies:\n  - name: d%d\n    services: [ssh]\n    <<: %s\n", i, mergeBomb("hostname", "h", 5, 6))
	}
	tests := []struct {
		name  string
		edits map[string]string
		file  string // where the one error must be
	}{
		{"merge bomb of valid keys in a host's network", map[string]string{
			"hosts/worker-a.yaml": "network:\n  <<: " + mergeBomb("name", "decnet_lan", 10, 7) + "\n" + baseHost,
		}, "hosts/worker-a.yaml"},
		{"merge bomb in fleet.yaml's defaults", map[string]string{
			"fleet.yaml|defaults:\n": "defaults:\n  <<: " + mergeBomb("distro", "debian", 10, 7) + "\n",
		}, "fleet.yaml"},
		{"4,000 deckies merging one bomb", map[string]string{
			"hosts/worker-a.yaml": hostileHost(4000, 0),
		}, "hosts/worker-a.yaml"},
		{"merge bomb inside service_config", map[string]string{
			"hosts/worker-a.yaml": "deckies:\n  - name: y\n    services: [ssh]\n    service_config: {ssh: {<<: " + mergeBomb("banner", "b", 10, 7) + "}}\n",
		}, "hosts/worker-a.yaml"},
		{"a mapping merging itself", map[string]string{
			"hosts/worker-a.yaml": "network: &n {<<: *n}\ndeckies: []\n",
		}, "hosts/worker-a.yaml"},
		{"200 host files with one small bomb each", manyFiles, "hosts/w"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Load(repo(tt.edits))
			if f != nil {
				t.Fatalf("hostile repository accepted")
			}
			file := tt.file
			var es Errors
			if errors.As(err, &es) && len(es) == 1 && strings.HasPrefix(es[0].File, file) {
				file = es[0].File
			}
			wantOneBudgetError(t, err, file)
		})
	}
}

// TestBudgetNeverSteppedOver: the check compares with <=, so wherever the
// counter stands when it is looked at (just spent, or far past zero after
// a burst of derefs), a mapping or list over budget is never read as empty
// without the sticky error.
func TestBudgetNeverSteppedOver(t *testing.T) {
	for _, left := range []int{1, 0, -1, -5, -100000} {
		var errs Errors
		w := &walker{file: "f.yaml", errs: &errs, budget: &budget{left: left}}
		root := document(t, "a: 1\nb: [1, 2]\n")
		_, mapOK := w.pairs(root, "")
		listOK := w.list(root.Content[3], "b", func(int, *yaml.Node, string) {})
		if left <= 0 && (mapOK || listOK) {
			t.Errorf("left=%d: read a mapping or list with the budget spent", left)
		}
		if (!mapOK || !listOK) && !w.budget.exhausted() {
			t.Errorf("left=%d: read short (mapping %v, list %v) without the budget error", left, mapOK, listOK)
		}
		if !mapOK && (!w.overBudget(root, "") || len(errs) != 0) {
			t.Errorf("left=%d: the budget error must be sticky, and recorded apart from the file's errors: %v", left, errs)
		}
	}
}

// document parses YAML for walker tests.
func document(t *testing.T, s string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0]
}

// TestLoadBudgetIsPerRepository: one small bomb alone is within the
// repository's budget; 200 of them in 200 files are not (see the table
// above), so the budget is not granted per file.
func TestLoadBudgetIsPerRepository(t *testing.T) {
	one := fmt.Sprintf("deckies:\n  - name: d0\n    services: [ssh]\n    <<: %s\n", mergeBomb("hostname", "h", 5, 6))
	if _, err := Load(repo(map[string]string{"hosts/worker-a.yaml": one})); err != nil {
		t.Fatalf("one file with 5^6 merged nodes must be within the budget: %v", err)
	}
}

// TestLoadAnchorsInOrdinaryUse: anchors and merge keys used the way
// operators use them stay well within the budget.
func TestLoadAnchorsInOrdinaryUse(t *testing.T) {
	var b strings.Builder
	b.WriteString("deckies:\n  - &web\n    name: web-0\n    services: [http, ssh]\n    service_config: &cfg {http: {server_header: \"Apache\"}, ssh: {banner: \"SSH-2.0-x\"}}\n")
	for i := 1; i < 500; i++ {
		fmt.Fprintf(&b, "  - {<<: *web, name: web-%d, service_config: *cfg}\n", i)
	}
	f, err := Load(repo(map[string]string{"hosts/worker-a.yaml": b.String()}))
	if err != nil {
		t.Fatal(err)
	}
	h := f.Hosts["worker-a"]
	if len(h.Deckies) != 500 || h.Deckies[499].ServiceConfig["http"]["server_header"].Str != "Apache" || len(h.Deckies[499].Services) != 2 {
		t.Fatalf("merged deckies decoded wrong: %d %+v", len(h.Deckies), h.Deckies[499])
	}
}

func TestLoadSizeLimits(t *testing.T) {
	big := benignHost(MaxFileSize * 9 / 10)
	many := map[string]string{}
	for i := 0; i <= MaxHostFiles; i++ {
		many[fmt.Sprintf("hosts/w%04d.yaml", i)] = "deckies: []\nprune: {max: all}\n"
	}
	total := map[string]string{}
	for i := 0; i < 5; i++ {
		total[fmt.Sprintf("hosts/w%d.yaml", i)] = strings.ReplaceAll(big, "name: d", fmt.Sprintf("name: w%d-d", i))
	}
	tests := []struct {
		name  string
		edits map[string]string
		want  string
	}{
		{"a file over 1 MiB", map[string]string{"hosts/worker-a.yaml": benignHost(MaxFileSize + 1)},
			"hosts/worker-a.yaml: is larger than 1048576 bytes"},
		{"too many host files", many,
			"hosts: holds 2050 host files; a fleet repository may hold at most 2048"},
		{"too many bytes in total", total,
			"hosts/w4.yaml: the repository's YAML (fleet.yaml and hosts/*.yaml) exceeds 4194304 bytes in total"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(repo(tt.edits))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got %v\nwant %s", err, tt.want)
			}
		})
	}
}

func TestLoadYAMLErrorsCarryALine(t *testing.T) {
	deep := "deckies:\n  - name: a\n    services: [ssh]\n    hostname: " + strings.Repeat("[", 10001) + "\n"
	tests := []struct {
		name  string
		edits map[string]string
		want  string
	}{
		{"invalid UTF-8", map[string]string{"hosts/worker-a.yaml|db-01": "db-\xff1"},
			"hosts/worker-a.yaml:8: invalid YAML: invalid leading UTF-8 octet"},
		{"incomplete UTF-8 at the end", map[string]string{"hosts/worker-a.yaml": baseHost + "# \xc3"},
			"hosts/worker-a.yaml:10: invalid YAML: incomplete UTF-8 octet sequence"},
		{"control character", map[string]string{"hosts/worker-a.yaml|    services: [ssh]": "    services: [ssh\x07]"},
			"hosts/worker-a.yaml:9: invalid YAML: control characters are not allowed"},
		{"unknown anchor", map[string]string{"hosts/worker-a.yaml|    services: [ssh]": "    services: *svc"},
			"hosts/worker-a.yaml:9: invalid YAML: unknown anchor 'svc' referenced"},
		{"unknown anchor named in a comment first", map[string]string{"hosts/worker-a.yaml": "# uses *svc below\n" + strings.Replace(baseHost, "services: [ssh]", "services: *svc", 1)},
			"hosts/worker-a.yaml:10: invalid YAML: unknown anchor 'svc' referenced"},
		{"nesting too deep", map[string]string{"hosts/worker-a.yaml": deep},
			"hosts/worker-a.yaml:4: invalid YAML: exceeded max depth of 10000"},
		{"fleet.yaml's unknown defaults.distro, reported once", map[string]string{"fleet.yaml|  distro: debian": "  distro: gentoo"},
			`fleet.yaml:3: defaults.distro: distro "gentoo" is not in the distros catalog (known: debian)`},
		{"fleet.yaml's gateway outside the subnet, reported once", map[string]string{
			"fleet.yaml|gateway: 198.51.100.1": "gateway: 192.0.2.1",
			"hosts/worker-b.yaml":              "deckies:\n  - name: other\n    services: [ssh]\n",
		}, "fleet.yaml:6: defaults.network.gateway: gateway 192.0.2.1 is outside the subnet 198.51.100.0/24"},
		{"fleet.yaml's gateway on the network address, reported once", map[string]string{
			"fleet.yaml|gateway: 198.51.100.1": "gateway: 198.51.100.0",
			"hosts/worker-b.yaml":              "deckies:\n  - name: other\n    services: [ssh]\n",
		}, "fleet.yaml:6: defaults.network.gateway: gateway 198.51.100.0 is the network address of 198.51.100.0/24"},
		{"a host's own gateway outside its subnet", map[string]string{
			"hosts/worker-a.yaml|ip_pool: 198.51.100.64/27\n": "ip_pool: 198.51.100.64/27\nnetwork:\n  gateway: 203.0.113.1\n",
		}, "hosts/worker-a.yaml:3: network.gateway: gateway 203.0.113.1 is outside the subnet 198.51.100.0/24"},
		{"a host's subnet that holds the default gateway as its broadcast", map[string]string{
			"fleet.yaml|gateway: 198.51.100.1":                "gateway: 198.51.100.127",
			"hosts/worker-a.yaml|ip_pool: 198.51.100.64/27\n": "ip_pool: 198.51.100.64/27\nnetwork:\n  subnet: 198.51.100.0/25\n",
			"hosts/worker-a.yaml|198.51.100.70":               "198.51.100.71",
		}, "hosts/worker-a.yaml:3: network.gateway: gateway 198.51.100.127 (from fleet.yaml defaults.network) is the broadcast address of 198.51.100.0/25"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(repo(tt.edits))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got  %v\nwant %s", err, tt.want)
			}
		})
	}
}

// TestLoadNeverOpensNonRegularFiles reads a real directory through
// os.DirFS, with named pipes where the loader reads. Opening a FIFO for
// reading blocks until a writer comes, so a loader that opened one would
// hang here.
func TestLoadNeverOpensNonRegularFiles(t *testing.T) {
	tests := []struct {
		name string
		fifo string
		want string
	}{
		{"named pipe as a host file", "hosts/worker-b.yaml",
			"hosts/worker-b.yaml: is a named pipe; a host file must be a regular file inside the repository"},
		{"named pipe as fleet.yaml", "fleet.yaml", "fleet.yaml: is a named pipe; it must be a regular file"},
		{"named pipe as hosts/", "hosts", "hosts: is a named pipe; it must be a directory"},
		{"named pipe in a build context", "services/ssh/pipe",
			"fleet.yaml:13: services.ssh.build: services/ssh/pipe is a named pipe; a build context holds only regular files, directories and symlinks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, f := range repo(nil) {
				if name == tt.fifo || strings.HasPrefix(name, tt.fifo+"/") {
					continue
				}
				p := filepath.Join(dir, filepath.FromSlash(name))
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, f.Data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			p := filepath.Join(dir, filepath.FromSlash(tt.fifo))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { _, err := Load(os.DirFS(dir)); done <- err }()
			var err error
			select {
			case err = <-done:
			case <-time.After(time.Minute): // a hang guard, not a performance check
				t.Fatalf("Load blocked on the named pipe %s", tt.fifo)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got  %v\nwant %s", err, tt.want)
			}
		})
	}
}

// cancelFS cancels a context when a given file is opened and records
// every file opened after that.
type cancelFS struct {
	fstest.MapFS
	at     string
	cancel context.CancelFunc
	after  []string
	seen   bool
}

func (c *cancelFS) Open(name string) (fs.File, error) {
	if c.seen && strings.HasSuffix(name, ".yaml") {
		c.after = append(c.after, name)
	}
	if name == c.at {
		c.seen = true
		c.cancel()
	}
	return c.MapFS.Open(name)
}

func TestLoadContextStopsBetweenFiles(t *testing.T) {
	edits := map[string]string{}
	for i := 0; i < 20; i++ {
		edits[fmt.Sprintf("hosts/w%02d.yaml", i)] = fmt.Sprintf("deckies:\n  - name: d%d\n    services: [ssh]\n", i)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fsys := &cancelFS{MapFS: repo(edits), at: "hosts/w05.yaml", cancel: cancel}
	f, err := LoadContext(ctx, fsys)
	if f != nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("want a cancelled load, got fleet=%v err=%v", f != nil, err)
	}
	if len(fsys.after) != 0 {
		t.Errorf("files read after cancellation: %v", fsys.after)
	}

	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := LoadContext(ctx, repo(nil)); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled context must stop the load: %v", err)
	}
}

func TestLoadContainerNameCollisions(t *testing.T) {
	tests := []struct {
		name  string
		edits map[string]string
		want  string
	}{
		{"decky web-ssh against service ssh of decky web, one host", map[string]string{
			"hosts/worker-a.yaml": "deckies:\n  - name: web\n    services: [ssh]\n  - name: web-ssh\n    services: [http]\n",
		}, `hosts/worker-a.yaml:4: deckies[1].name: container name "web-ssh" (the base container of decky web-ssh) is already the container of service ssh of decky web at hosts/worker-a.yaml:2; rename one decky`},
		{"service containers of two deckies", map[string]string{
			"hosts/worker-a.yaml":  "deckies:\n  - name: a-b\n    services: [http]\n  - name: a\n    services: [b-http]\n",
			"fleet.yaml|  http:\n": "  b-http:\n    image: nginx:1.25\n  http:\n",
		}, `hosts/worker-a.yaml:4: deckies[1].services[0]: container name "a-b-http" (the container of service b-http of decky a) is already the container of service http of decky a-b at hosts/worker-a.yaml:2; rename one decky`},
		{"across hosts", map[string]string{
			"hosts/worker-b.yaml": "deckies:\n  - name: db-01-ssh\n    services: [http]\n",
		}, `hosts/worker-b.yaml:2: deckies[0].name: container name "db-01-ssh" (the base container of decky db-01-ssh) is already the container of service ssh of decky db-01 at hosts/worker-a.yaml:8; rename one decky`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(repo(tt.edits))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("got  %v\nwant %s", err, tt.want)
			}
		})
	}
}

// BenchmarkLoadHostile loads a 1 MiB host file whose deckies all merge one
// bomb, and in the same iteration a benign host file of the same size; it
// reports the ratio of their times (hostile/benign), which must stay
// small: the budget makes a hostile file cost about what a plain one does.
func BenchmarkLoadHostile(b *testing.B) {
	hostile := repo(map[string]string{"hosts/worker-a.yaml": hostileHost(4000, 1<<20-256)})
	benign := repo(map[string]string{"hosts/worker-a.yaml": benignHost(1<<20 - 256)})
	var th, tb time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		_, err := Load(hostile)
		th += time.Since(t0)
		wantOneBudgetError(b, err, "hosts/worker-a.yaml")
		t0 = time.Now()
		if _, err := Load(benign); err != nil {
			b.Fatal(err)
		}
		tb += time.Since(t0)
	}
	b.ReportMetric(float64(th)/float64(tb), "hostile/benign")
	b.ReportMetric(float64(th.Milliseconds())/float64(b.N), "hostile-ms/op")
}

// BenchmarkLoadBenign is the baseline: a valid 1 MiB host file.
func BenchmarkLoadBenign(b *testing.B) {
	benign := repo(map[string]string{"hosts/worker-a.yaml": benignHost(1<<20 - 256)})
	for i := 0; i < b.N; i++ {
		if _, err := Load(benign); err != nil {
			b.Fatal(err)
		}
	}
}
