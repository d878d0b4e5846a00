package desired

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"path"
	"strings"

	"github.com/distribution/reference"
	"gopkg.in/yaml.v3"
)

// MaxFileSize bounds every YAML file Load reads.
const MaxFileSize = 1 << 20

// Load reads and validates the fleet repository in fsys. On success the
// error is nil; otherwise it is an [Errors] holding every problem found.
// Symlinks are only followed inside build contexts' checks when fsys
// implements [fs.ReadLinkFS]; fleet.yaml and host files must be regular
// files.
func Load(fsys fs.FS) (*Fleet, error) {
	var errs Errors
	f := &Fleet{
		Distros:  map[string]*Distro{},
		Services: map[string]*Service{},
		Hosts:    map[string]*Host{},
	}
	// Cross-file checks against a catalog that could not be read would
	// only bury the real error under one "not in the catalog" per decky.
	fleetOK := false
	if data, ok := readFile(fsys, FleetFile, &errs); ok {
		fleetOK = parseFleet(f, data, &errs)
	}
	entries, err := fs.ReadDir(fsys, HostsDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		errs = append(errs, Error{File: HostsDir, Msg: "directory is missing: each worker needs hosts/<host>.yaml"})
	case err != nil:
		errs = append(errs, Error{File: HostsDir, Msg: fmt.Sprintf("cannot list: %v", err)})
	}
	if err == nil && isSymlink(fsys, HostsDir) {
		errs = append(errs, Error{File: HostsDir, Msg: "is a symlink; it must be a directory inside the repository"})
		entries = nil
	}
	for _, e := range entries {
		name := e.Name()
		file := path.Join(HostsDir, name)
		if e.IsDir() || strings.HasPrefix(name, ".") || strings.EqualFold(name, "README.md") {
			continue
		}
		stem, ext := strings.TrimSuffix(name, path.Ext(name)), path.Ext(name)
		if ext != ".yaml" {
			if ext == ".yml" {
				errs = append(errs, Error{File: file, Msg: "host files must end in .yaml (this one would be ignored)"})
			}
			continue
		}
		if !NameRE.MatchString(stem) {
			errs = append(errs, Error{File: file, Msg: fmt.Sprintf("host name %q must match %s", stem, NameRE)})
			continue
		}
		data, ok := readFile(fsys, file, &errs)
		if !ok {
			continue
		}
		if h := parseHost(stem, file, data, &errs); h != nil {
			f.Hosts[stem] = h
		}
	}
	if fleetOK {
		validate(fsys, f, &errs)
	}
	if len(errs) > 0 {
		return nil, errs.sorted()
	}
	return f, nil
}

func isSymlink(fsys fs.FS, name string) bool {
	if rl, ok := fsys.(fs.ReadLinkFS); ok {
		if fi, err := rl.Lstat(name); err == nil {
			return fi.Mode()&fs.ModeSymlink != 0
		}
	}
	return false
}

func readFile(fsys fs.FS, name string, errs *Errors) ([]byte, bool) {
	if isSymlink(fsys, name) {
		*errs = append(*errs, Error{File: name, Msg: "is a symlink; it must be a regular file inside the repository"})
		return nil, false
	}
	fh, err := fsys.Open(name)
	if err != nil {
		msg := fmt.Sprintf("cannot open: %v", err)
		if errors.Is(err, fs.ErrNotExist) {
			msg = "file is missing"
		}
		*errs = append(*errs, Error{File: name, Msg: msg})
		return nil, false
	}
	defer fh.Close()
	if fi, err := fh.Stat(); err == nil && !fi.Mode().IsRegular() {
		*errs = append(*errs, Error{File: name, Msg: "is not a regular file"})
		return nil, false
	}
	data, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		*errs = append(*errs, Error{File: name, Msg: fmt.Sprintf("cannot read: %v", err)})
		return nil, false
	}
	if len(data) > MaxFileSize {
		*errs = append(*errs, Error{File: name, Msg: fmt.Sprintf("is larger than %d bytes", MaxFileSize)})
		return nil, false
	}
	return data, true
}

// document parses one YAML document and returns its root node.
func document(file string, data []byte, errs *Errors) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			*errs = append(*errs, Error{File: file, Msg: "file is empty"})
			return nil
		}
		*errs = append(*errs, yamlSyntaxError(file, err))
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		*errs = append(*errs, Error{File: file, Line: extra.Line, Msg: "holds more than one YAML document"})
	}
	if len(doc.Content) == 0 {
		*errs = append(*errs, Error{File: file, Msg: "file is empty"})
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

func parseFleet(f *Fleet, data []byte, errs *Errors) bool {
	root := document(FleetFile, data, errs)
	if root == nil {
		return false
	}
	w := &walker{file: FleetFile, errs: errs}
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
				if !NameRE.MatchString(e.key) {
					w.fail(e.k, e.field, "distro name must match %s", NameRE)
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
				if !NameRE.MatchString(e.key) {
					w.fail(e.k, e.field, "service name must match %s", NameRE)
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
				if !NameRE.MatchString(s) {
					w.fail(p.v, p.field, "%q must match %s", s, NameRE)
				}
				d.ComposeProject = s
			}
		},
		"distro": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				d.Distro = s
			}
		},
		"network": func(p pair) { w.network(p.v, p.field, &d.Network) },
	})
}

// network decodes a network block over the values already in n, so host
// overrides only change what they name.
func (w *walker) network(node *yaml.Node, field string, n *Network) {
	w.fields(node, field, nil, map[string]func(pair){
		"name": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if !dockerNameRE.MatchString(s) {
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
				if s != Auto && !ifaceRE.MatchString(s) {
					w.fail(p.v, p.field, "%q is not a valid interface name (or \"auto\")", s)
				}
				n.Interface = s
			}
		},
		"subnet": func(p pair) {
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
				"args": func(q pair) { b.Args = w.strMap(q.v, q.field, envRE.MatchString, "a build-arg name") },
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

// dangerousCaps are capabilities that give a container power over the host.
// A decoy faces attackers; the catalog may not hand it these.
var dangerousCaps = map[string]bool{
	"ALL": true, "SYS_ADMIN": true, "SYS_MODULE": true, "SYS_RAWIO": true, "SYS_PTRACE": true,
	"DAC_READ_SEARCH": true, "SYS_BOOT": true, "MAC_ADMIN": true, "MAC_OVERRIDE": true,
	"BPF": true, "PERFMON": true, "SYSLOG": true, "SYS_TIME": true, "LINUX_IMMUTABLE": true,
}

func (w *walker) service(n *yaml.Node, field string, s *Service) {
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
			w.list(p.v, p.field, func(_ int, item *yaml.Node, f string) {
				c, ok := w.str(item, f)
				if !ok {
					return
				}
				c = strings.TrimPrefix(strings.ToUpper(c), "CAP_")
				switch {
				case !capRE.MatchString(c):
					w.fail(item, f, "%q is not a capability name", c)
				case dangerousCaps[c]:
					w.fail(item, f, "capability %s gives a container power over the host; a decoy may not have it", c)
				default:
					s.CapAdd = append(s.CapAdd, c)
				}
			})
		},
		"environment": func(p pair) {
			s.Environment = w.strMap(p.v, p.field, envRE.MatchString, "an environment variable name")
		},
		"command": func(p pair) { s.Command = w.command(p) },
		"config": func(p pair) {
			ps, _ := w.pairs(p.v, p.field)
			for _, e := range ps {
				if !configKeyRE.MatchString(e.key) {
					w.fail(e.k, e.field, "config key must match %s", configKeyRE)
					continue
				}
				s.Config[e.key] = w.configKey(e)
			}
		},
	})
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
				if !envRE.MatchString(s) {
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
