package desired

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"path"
	"slices"
	"strings"

	"github.com/distribution/reference"
	"gopkg.in/yaml.v3"
)

// Size limits of a fleet repository. They bound the time and memory of a
// Load (validate of a repository at these limits takes about a second);
// anything larger is refused with one error, never partly read.
const (
	// MaxFileSize bounds every YAML file Load reads.
	MaxFileSize = 1 << 20
	// MaxHostFiles bounds the number of hosts/*.yaml files.
	MaxHostFiles = 2048
	// MaxRepoYAMLBytes bounds the YAML Load reads in total (fleet.yaml
	// plus every host file). A fleet of 1,000 workers with 30 deckies each
	// is about 3 MiB.
	MaxRepoYAMLBytes = 4 << 20
)

// loader is the state of one Load: the repository, the errors found so
// far and the budget every file and decky draws from.
type loader struct {
	ctx    context.Context
	fsys   fs.FS
	errs   Errors
	budget *budget
	read   int64 // YAML bytes read so far
	// locate bounds the bytes re-parsed to find the line of a YAML error
	// that yaml.v3 reports without one.
	locate int
}

func (l *loader) walker(file string) *walker {
	return &walker{file: file, errs: &l.errs, budget: l.budget}
}

// stop records e as the only error of the load (see budget).
func (l *loader) stop(e Error) {
	if !l.budget.exhausted() {
		l.budget.hit = &e
	}
}

// halted reports whether the load must end now: cancelled or over budget.
func (l *loader) halted() bool { return l.ctx.Err() != nil || l.budget.exhausted() }

// Load reads and validates the fleet repository in fsys. On success the
// error is nil; otherwise it is an [Errors] holding every problem found.
// It is LoadContext without cancellation.
func Load(fsys fs.FS) (*Fleet, error) { return LoadContext(context.Background(), fsys) }

// LoadContext reads and validates the fleet repository in fsys. On success
// the error is nil. When the repository is invalid the error is an
// [Errors] holding every problem found, or a single one when the
// repository is hostile or over a size limit (then nothing else is
// reported, since what follows would be noise). When ctx ends first the
// error wraps ctx.Err() (checked between files, hosts and deckies).
//
// Only regular files are opened, and their type is checked before they
// are opened, so a named pipe or device cannot block the load. Symlinks
// (fleet.yaml, hosts/, host files) are refused when fsys implements
// [fs.ReadLinkFS] (os.DirFS and fstest.MapFS do).
func LoadContext(ctx context.Context, fsys fs.FS) (*Fleet, error) {
	l := &loader{ctx: ctx, fsys: fsys, budget: newBudget(), locate: maxLocateBytes}
	f := &Fleet{
		Distros:  map[string]*Distro{},
		Services: map[string]*Service{},
		Hosts:    map[string]*Host{},
	}
	// Cross-file checks against a catalog that could not be read would
	// only bury the real error under one "not in the catalog" per decky.
	fleetOK := false
	if data, ok := l.readFile(FleetFile); ok {
		fleetOK = parseFleet(f, data, l)
	}
	for _, e := range l.hostFiles() {
		if l.halted() {
			break
		}
		name := e.Name()
		file := path.Join(HostsDir, name)
		stem := strings.TrimSuffix(name, ".yaml")
		data, ok := l.readFile(file)
		if !ok {
			continue
		}
		if h := parseHost(stem, file, data, l); h != nil {
			f.Hosts[stem] = h
		}
	}
	if fleetOK && !l.halted() {
		validate(l, f)
	}
	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("loading the fleet repository was stopped: %w", ctx.Err())
	case l.budget.exhausted():
		return nil, Errors{*l.budget.hit}
	case len(l.errs) > MaxErrors:
		// Past this an operator fixes the first ones and runs again.
		es := l.errs.sorted()[:MaxErrors]
		return nil, append(es, Error{File: es[MaxErrors-1].File, Msg: fmt.Sprintf("and %d more errors not shown", len(l.errs)-MaxErrors)})
	case len(l.errs) > 0:
		return nil, l.errs.sorted()
	}
	return f, nil
}

// MaxErrors is the most errors one Load returns; a note says how many
// more there were.
const MaxErrors = 1000

// hostFiles lists hosts/*.yaml, reporting what cannot be a host file.
// Entry types come from the directory listing, so nothing is opened.
func (l *loader) hostFiles() []fs.DirEntry {
	add := func(file, format string, args ...any) {
		l.errs = append(l.errs, Error{File: file, Msg: fmt.Sprintf(format, args...)})
	}
	if isSymlink(l.fsys, HostsDir) {
		add(HostsDir, "is a symlink; it must be a directory inside the repository")
		return nil
	}
	fi, err := fs.Stat(l.fsys, HostsDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		add(HostsDir, "directory is missing: each worker needs hosts/<host>.yaml")
		return nil
	case err != nil:
		add(HostsDir, "cannot read: %v", err)
		return nil
	case !fi.IsDir():
		add(HostsDir, "is %s; it must be a directory", fileKind(fi.Mode()))
		return nil
	}
	entries, err := fs.ReadDir(l.fsys, HostsDir)
	if err != nil {
		add(HostsDir, "cannot list: %v", err)
		return nil
	}
	var out []fs.DirEntry
	for _, e := range entries {
		name := e.Name()
		file := path.Join(HostsDir, name)
		if strings.HasPrefix(name, ".") || strings.EqualFold(name, "README.md") {
			continue
		}
		switch ext := path.Ext(name); {
		case ext == ".yml":
			add(file, "host files must end in .yaml (this one would be ignored)")
			continue
		case ext != ".yaml":
			continue
		}
		if stem := strings.TrimSuffix(name, ".yaml"); !NameRE().MatchString(stem) {
			add(file, "host name %q must match %s", stem, NameRE())
			continue
		}
		if t := e.Type(); !t.IsRegular() {
			add(file, "is %s; a host file must be a regular file inside the repository", fileKind(t))
			continue
		}
		out = append(out, e)
	}
	if len(out) > MaxHostFiles {
		l.stop(Error{File: HostsDir, Msg: fmt.Sprintf("holds %d host files; a fleet repository may hold at most %d", len(out), MaxHostFiles)})
		return nil
	}
	return out
}

// fileKind names a non-regular file type for messages.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m.IsRegular():
		return "a regular file"
	}
	return "not a regular file"
}

func isSymlink(fsys fs.FS, name string) bool {
	if rl, ok := fsys.(fs.ReadLinkFS); ok {
		if fi, err := rl.Lstat(name); err == nil {
			return fi.Mode()&fs.ModeSymlink != 0
		}
	}
	return false
}

// readFile reads one YAML file of the repository. Its type and size are
// checked before it is opened: opening a named pipe would block, and a
// file over the limits is refused without being read.
func (l *loader) readFile(name string) ([]byte, bool) {
	fail := func(format string, args ...any) ([]byte, bool) {
		l.errs = append(l.errs, Error{File: name, Msg: fmt.Sprintf(format, args...)})
		return nil, false
	}
	if isSymlink(l.fsys, name) {
		return fail("is a symlink; it must be a regular file inside the repository")
	}
	fi, err := fs.Stat(l.fsys, name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail("file is missing")
	case err != nil:
		return fail("cannot read: %v", err)
	case !fi.Mode().IsRegular():
		return fail("is %s; it must be a regular file", fileKind(fi.Mode()))
	case fi.Size() > MaxFileSize:
		return fail("is larger than %d bytes", MaxFileSize)
	case l.read+fi.Size() > MaxRepoYAMLBytes:
		l.stop(Error{File: name, Msg: fmt.Sprintf("the repository's YAML (fleet.yaml and hosts/*.yaml) exceeds %d bytes in total", MaxRepoYAMLBytes)})
		return nil, false
	}
	fh, err := l.fsys.Open(name)
	if err != nil {
		return fail("cannot open: %v", err)
	}
	defer fh.Close()
	// The file may have grown since Stat: read one byte past the limit.
	data, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return fail("cannot read: %v", err)
	}
	if len(data) > MaxFileSize {
		return fail("is larger than %d bytes", MaxFileSize)
	}
	l.read += int64(len(data))
	if l.read > MaxRepoYAMLBytes {
		l.stop(Error{File: name, Msg: fmt.Sprintf("the repository's YAML (fleet.yaml and hosts/*.yaml) exceeds %d bytes in total", MaxRepoYAMLBytes)})
		return nil, false
	}
	l.budget.grant(len(data))
	return data, true
}

// document parses one YAML document and returns its root node.
func (l *loader) document(file string, data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			l.errs = append(l.errs, Error{File: file, Msg: "file is empty"})
			return nil
		}
		e := yamlSyntaxError(file, err)
		if e.Line == 0 {
			e.Line = l.locateError(data, err.Error())
		}
		l.errs = append(l.errs, e)
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		l.errs = append(l.errs, Error{File: file, Line: extra.Line, Msg: "holds more than one YAML document"})
	}
	if len(doc.Content) == 0 {
		l.errs = append(l.errs, Error{File: file, Msg: "file is empty"})
		return nil
	}
	return doc.Content[0]
}

// yamlSyntaxError turns yaml.v3's "yaml: line N: msg" into an Error.
func yamlSyntaxError(file string, err error) Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if _, scanErr := fmt.Sscanf(msg, "line %d:", &line); scanErr == nil {
		msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
		// yaml.v3 reports parser (not scanner) errors with a 0-based line
		// number; its parser messages all start with one of these.
		for _, p := range []string{"did not find expected", "found duplicate %", "found incompatible", "found undefined tag"} {
			if strings.HasPrefix(msg, p) {
				line++
				break
			}
		}
	}
	return Error{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

func parseFleet(f *Fleet, data []byte, l *loader) bool {
	root := l.document(FleetFile, data)
	if root == nil {
		return false
	}
	w := l.walker(FleetFile)
	f.Defaults = Defaults{
		ComposeProject: DefaultComposeProject,
		Network:        Network{Name: DefaultNetworkName, Driver: DefaultDriver, Interface: Auto},
	}
	w.fields(root, "", []string{"version", "services"}, map[string]func(pair){
		"version": func(p pair) {
			if v, ok := w.integer(p.v, p.field); ok {
				if v != FormatVersion {
					w.fail(p.v, p.field, "format version %d is not supported by this agent (it reads version %d)", v, FormatVersion)
				}
				f.Version = int(v)
			}
		},
		"defaults": func(p pair) { w.defaults(p.v, p.field, &f.Defaults) },
		"distros": func(p pair) {
			ps, _ := w.pairs(p.v, p.field)
			for _, e := range ps {
				if !NameRE().MatchString(e.key) {
					w.fail(e.k, e.field, "distro name must match %s", NameRE())
					continue
				}
				d := &Distro{Name: e.key, Pos: w.pos(e.k)}
				w.distro(e.v, e.field, d)
				f.Distros[e.key] = d
			}
		},
		"services": func(p pair) {
			ps, _ := w.pairs(p.v, p.field)
			for _, e := range ps {
				if !NameRE().MatchString(e.key) {
					w.fail(e.k, e.field, "service name must match %s", NameRE())
					continue
				}
				s := &Service{Name: e.key, Pos: w.pos(e.k), Config: map[string]*ConfigKey{}}
				w.service(e.v, e.field, s)
				f.Services[e.key] = s
			}
		},
	})
	return true
}

func (w *walker) defaults(n *yaml.Node, field string, d *Defaults) {
	w.fields(n, field, nil, map[string]func(pair){
		"compose_project": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if !NameRE().MatchString(s) {
					w.fail(p.v, p.field, "%q must match %s", s, NameRE())
				}
				d.ComposeProject = s
			}
		},
		"distro": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				d.Distro = s
				d.distroPos = w.pos(w.deref(p.v))
			}
		},
		"network": func(p pair) { w.network(p.v, p.field, &d.Network, &d.netPos) },
	})
}

// network decodes a network block over the values already in n, so host
// overrides only change what they name.
func (w *walker) network(node *yaml.Node, field string, n *Network, at *netPos) {
	w.fields(node, field, nil, map[string]func(pair){
		"name": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if !dockerNameRE().MatchString(s) {
					w.fail(p.v, p.field, "%q is not a valid Docker network name", s)
				}
				n.Name = s
			}
		},
		"driver": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if s != DriverMacvlan && s != DriverIPvlan {
					w.fail(p.v, p.field, "driver %q is not supported (use macvlan or ipvlan)", s)
				}
				n.Driver = s
			}
		},
		"interface": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if s != Auto && !ifaceRE().MatchString(s) {
					w.fail(p.v, p.field, "%q is not a valid interface name (or \"auto\")", s)
				}
				n.Interface = s
			}
		},
		"subnet": func(p pair) {
			at.subnet = w.pos(w.deref(p.v))
			if s, ok := w.str(p.v, p.field); ok {
				if s == Auto {
					n.Subnet = netip.Prefix{}
					return
				}
				pf, err := netip.ParsePrefix(s)
				switch {
				case err != nil || !pf.Addr().Is4():
					w.fail(p.v, p.field, "%q is not an IPv4 CIDR (or \"auto\")", s)
				case pf.Masked() != pf:
					w.fail(p.v, p.field, "%q has host bits set; the network is %s", s, pf.Masked())
				case pf.Bits() > 30:
					w.fail(p.v, p.field, "%q leaves no room for deckies (need /30 or larger)", s)
				default:
					n.Subnet = pf
				}
			}
		},
		"gateway": func(p pair) {
			at.gateway = w.pos(w.deref(p.v))
			if s, ok := w.str(p.v, p.field); ok {
				if s == Auto {
					n.Gateway = netip.Addr{}
					return
				}
				a, err := netip.ParseAddr(s)
				if err != nil || !a.Is4() {
					w.fail(p.v, p.field, "%q is not an IPv4 address (or \"auto\")", s)
					return
				}
				n.Gateway = a
			}
		},
	})
}

func (w *walker) source(p pair, src *Source) bool {
	switch p.key {
	case "image":
		if s, ok := w.str(p.v, p.field); ok {
			if _, err := reference.ParseNormalizedNamed(s); err != nil {
				w.fail(p.v, p.field, "%q is not a valid image reference: %v", s, err)
			}
			src.Image = s
		}
		return true
	case "build":
		n := w.deref(p.v)
		b := &Build{Dockerfile: "Dockerfile", Pos: w.pos(n)}
		if n != nil && n.Kind == yaml.ScalarNode {
			if s, ok := w.str(n, p.field); ok {
				b.Context = s
			}
		} else {
			w.fields(n, p.field, []string{"context"}, map[string]func(pair){
				"context": func(q pair) {
					if s, ok := w.str(q.v, q.field); ok {
						b.Context = s
					}
				},
				"dockerfile": func(q pair) {
					if s, ok := w.str(q.v, q.field); ok {
						b.Dockerfile = s
					}
				},
				"args": func(q pair) { b.Args = w.strMap(q.v, q.field, envRE().MatchString, "a build-arg name") },
			})
		}
		if b.Context != "" {
			if clean, msg := cleanRepoPath(b.Context); msg != "" {
				w.fail(n, join(p.field, "context"), "%q %s", b.Context, msg)
				b.Context = ""
			} else {
				b.Context = clean
			}
		}
		if df, msg := cleanRepoPath(b.Dockerfile); msg != "" {
			w.fail(n, join(p.field, "dockerfile"), "%q %s", b.Dockerfile, msg)
			b.Context = ""
		} else {
			b.Dockerfile = df
		}
		src.Build = b
		return true
	}
	return false
}

// cleanRepoPath checks a path written in the repository: relative,
// slash-separated, no "..", and returns it cleaned.
func cleanRepoPath(p string) (string, string) {
	switch {
	case p == "":
		return "", "is empty"
	case strings.HasPrefix(p, "/"):
		return "", "is absolute; paths must be relative to the repository root"
	case strings.Contains(p, `\`):
		return "", "contains a backslash; use / as separator"
	case strings.ContainsRune(p, 0):
		return "", "contains a NUL byte"
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return "", `contains ".."; paths must stay inside the repository`
		}
		if el == ".git" {
			return "", "points into .git"
		}
	}
	clean := path.Clean(p)
	if !fs.ValidPath(clean) {
		return "", "is not a valid path inside the repository"
	}
	return clean, ""
}

func (w *walker) sourceDone(n *yaml.Node, field string, src *Source) {
	switch {
	case src.Image == "" && src.Build == nil:
		w.fail(n, field, "needs either image or build")
	case src.Image != "" && src.Build != nil:
		w.fail(n, field, "sets both image and build; choose one")
	}
}

func (w *walker) distro(n *yaml.Node, field string, d *Distro) {
	w.fields(n, field, nil, map[string]func(pair){
		"image":   func(p pair) { w.source(p, &d.Source) },
		"build":   func(p pair) { w.source(p, &d.Source) },
		"command": func(p pair) { d.Command = w.command(p) },
	})
	w.sourceDone(w.deref(n), field, &d.Source)
	if d.Command == nil {
		d.Command = []string{"sleep", "infinity"}
	}
}

func (w *walker) command(p pair) []string {
	c := w.strList(p.v, p.field)
	if len(c) == 0 {
		w.fail(p.v, p.field, "must be a non-empty list of strings")
	}
	return c
}

// MaxNetRawReasonLen bounds net_raw_reason: a sentence, not a document.
const MaxNetRawReasonLen = 300

func (w *walker) service(n *yaml.Node, field string, s *Service) {
	s.Check = true
	s.Limits = DefaultLimits()
	var netRaw *yaml.Node // the cap_add item naming NET_RAW
	var netRawField string
	var reasonNode *yaml.Node
	w.fields(n, field, nil, map[string]func(pair){
		"image": func(p pair) { w.source(p, &s.Source) },
		"build": func(p pair) { w.source(p, &s.Source) },
		"ports": func(p pair) {
			seen := map[Port]bool{}
			w.list(p.v, p.field, func(_ int, item *yaml.Node, f string) {
				port, ok := w.port(item, f)
				if !ok {
					return
				}
				if seen[port] {
					w.fail(item, f, "port %d/%s is declared twice", port.Number, port.Proto)
					return
				}
				seen[port] = true
				s.Ports = append(s.Ports, port)
			})
		},
		"cap_add": func(p pair) {
			seen := map[string]bool{}
			w.list(p.v, p.field, func(_ int, item *yaml.Node, f string) {
				written, ok := w.str(item, f)
				if !ok {
					return
				}
				c, msg := checkCap(written)
				switch {
				case msg != "":
					w.fail(item, f, "%q %s", written, msg)
				case seen[c]:
					w.fail(item, f, "capability %s is listed twice", c)
				default:
					seen[c] = true
					if c == CapNetRaw {
						netRaw, netRawField = w.deref(item), f
					}
					s.CapAdd = append(s.CapAdd, c)
				}
			})
		},
		"net_raw_reason": func(p pair) {
			if r, ok := w.str(p.v, p.field); ok {
				reasonNode = w.deref(p.v)
				switch r = strings.TrimSpace(r); {
				case r == "":
					w.fail(p.v, p.field, "must say why the service needs raw sockets")
				case len(r) > MaxNetRawReasonLen || strings.ContainsAny(r, "\n\r\x00"):
					w.fail(p.v, p.field, "must be one line of at most %d bytes", MaxNetRawReasonLen)
				default:
					s.NetRawReason = r
				}
			}
		},
		"environment": func(p pair) {
			s.Environment = w.strMap(p.v, p.field, envRE().MatchString, "an environment variable name")
		},
		"command": func(p pair) { s.Command = w.command(p) },
		"config": func(p pair) {
			ps, _ := w.pairs(p.v, p.field)
			for _, e := range ps {
				if !configKeyRE().MatchString(e.key) {
					w.fail(e.k, e.field, "config key must match %s", configKeyRE())
					continue
				}
				s.Config[e.key] = w.configKey(e)
			}
		},
		"check":     func(p pair) { s.Check, _ = w.boolean(p.v, p.field) },
		"read_only": func(p pair) { s.ReadOnly, _ = w.boolean(p.v, p.field) },
		"limits":    func(p pair) { w.limits(p.v, p.field, &s.Limits) },
	})
	switch {
	case netRaw != nil && reasonNode == nil:
		w.fail(netRaw, netRawField, "NET_RAW lets a decoy on the LAN forge packets (ARP spoofing); a service gets it only with net_raw_reason: \"<why it needs raw sockets>\"")
	case netRaw == nil && reasonNode != nil:
		w.fail(reasonNode, join(field, "net_raw_reason"), "is set but cap_add has no NET_RAW")
		s.NetRawReason = ""
	case netRaw == nil:
		s.NetRawReason = ""
	}
	if netRaw != nil && s.NetRawReason == "" {
		// Refused above; never expose NET_RAW without its reason.
		s.CapAdd = slices.DeleteFunc(s.CapAdd, func(c string) bool { return c == CapNetRaw })
	}
	w.sourceDone(w.deref(n), field, &s.Source)
}

func (w *walker) port(item *yaml.Node, f string) (Port, bool) {
	item = w.deref(item)
	if item == nil || item.Kind != yaml.ScalarNode {
		w.fail(item, f, "expected a port number or \"N/tcp\" / \"N/udp\"")
		return Port{}, false
	}
	text, proto := item.Value, "tcp"
	if item.ShortTag() == "!!str" {
		if num, pr, ok := strings.Cut(text, "/"); ok {
			text, proto = num, pr
		}
	} else if item.ShortTag() != "!!int" {
		w.fail(item, f, "expected a port number, got %s", kindName(item))
		return Port{}, false
	}
	var num int
	if _, err := fmt.Sscan(text, &num); err != nil || fmt.Sprint(num) != text || num < 1 || num > 65535 {
		w.fail(item, f, "%q is not a port between 1 and 65535", item.Value)
		return Port{}, false
	}
	if proto != "tcp" && proto != "udp" {
		w.fail(item, f, "protocol %q must be tcp or udp", proto)
		return Port{}, false
	}
	return Port{Number: uint16(num), Proto: proto}, true
}

func (w *walker) configKey(e pair) *ConfigKey {
	k := &ConfigKey{Name: e.key}
	var def *yaml.Node
	var defField string
	w.fields(e.v, e.field, []string{"type", "env"}, map[string]func(pair){
		"type": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				switch t := ConfigType(s); t {
				case TypeString, TypePassword, TypeInt, TypeBool, TypeEnum:
					k.Type = t
				default:
					w.fail(p.v, p.field, "type %q is not one of string, password, int, bool, enum", s)
				}
			}
		},
		"env": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if !envRE().MatchString(s) {
					w.fail(p.v, p.field, "%q is not an environment variable name", s)
				}
				k.Env = s
			}
		},
		"values":   func(p pair) { k.Values = w.strList(p.v, p.field) },
		"default":  func(p pair) { def, defField = p.v, p.field },
		"required": func(p pair) { k.Required, _ = w.boolean(p.v, p.field) },
	})
	if k.Type == TypeEnum && len(k.Values) == 0 {
		w.fail(w.deref(e.v), join(e.field, "values"), "an enum needs a non-empty values list")
	}
	if k.Type != TypeEnum && k.Values != nil {
		w.fail(w.deref(e.v), join(e.field, "values"), "only enum keys take values")
	}
	if def != nil && k.Type != "" {
		if v, ok := w.value(def, defField, k); ok {
			k.Default = &v
		}
	}
	return k
}

// value checks a service_config value against its key's type.
func (w *walker) value(n *yaml.Node, field string, k *ConfigKey) (Value, bool) {
	v := Value{Type: k.Type}
	switch k.Type {
	case TypeString, TypePassword:
		s, ok := w.str(n, field)
		if !ok {
			return v, false
		}
		v.Str = s
	case TypeEnum:
		s, ok := w.str(n, field)
		if !ok {
			return v, false
		}
		found := false
		for _, allowed := range k.Values {
			found = found || allowed == s
		}
		if !found {
			w.fail(n, field, "%q is not one of %s", s, strings.Join(k.Values, ", "))
			return v, false
		}
		v.Str = s
	case TypeInt:
		i, ok := w.integer(n, field)
		if !ok {
			return v, false
		}
		v.Int, v.Str = i, fmt.Sprint(i)
	case TypeBool:
		b, ok := w.boolean(n, field)
		if !ok {
			return v, false
		}
		v.Bool, v.Str = b, fmt.Sprint(b)
	default:
		return v, false
	}
	return v, true
}
