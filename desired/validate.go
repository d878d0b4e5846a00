package desired

import (
	"context"
	"fmt"
	"io/fs"
	"net/netip"
	"path"
	"strings"
)

// validate runs the checks that need more than one file: catalog
// references, build contexts on disk, network settings merged from
// defaults and host overrides, and fleet-wide uniqueness. A mistake in
// fleet.yaml is reported once, at its own line, and not again on every
// host or decky that inherits it.
func validate(l *loader, f *Fleet) {
	errs := &l.errs
	add := func(e Error) { *errs = append(*errs, e) }
	defaultDistroOK := true
	if f.Defaults.Distro != "" && f.Distros[f.Defaults.Distro] == nil {
		add(f.Defaults.distroPos.Errorf("defaults.distro", "distro %q is not in the distros catalog%s", f.Defaults.Distro, hint(sortedKeys(f.Distros))))
		defaultDistroOK = false
	}
	for _, name := range sortedKeys(f.Distros) {
		d := f.Distros[name]
		checkBuild(l.ctx, l.fsys, d.Source.Build, "distros."+name+".build", errs)
	}
	for _, name := range sortedKeys(f.Services) {
		s := f.Services[name]
		checkBuild(l.ctx, l.fsys, s.Source.Build, "services."+name+".build", errs)
	}
	checkNetwork(f.Defaults.Network, f.Defaults.netPos, "defaults.network", "", errs)

	names := map[string]Pos{}
	containers := map[string]renderedName{}
	type ipKey struct {
		subnet netip.Prefix
		ip     netip.Addr
	}
	fleetIPs := map[ipKey]Pos{}
	for _, hn := range f.HostNames() {
		if l.halted() {
			return
		}
		h := f.Hosts[hn]
		h.Network = mergeNetwork(f.Defaults.Network, h.Network, h.netPos)
		checkHostNetwork(h, errs)
		hostIPs := map[netip.Addr]Pos{}
		for i, d := range h.Deckies {
			if l.halted() {
				return
			}
			field := fmt.Sprintf("deckies[%d]", i)
			if d.Name != "" {
				if prev, dup := names[d.Name]; dup {
					add(d.Pos.Errorf(field+".name", "decky name %q is already used at %s; names must be unique across the fleet", d.Name, prev))
				} else {
					names[d.Name] = d.Pos
					checkContainerNames(d, field, containers, errs)
				}
			}
			checkDecky(l, f, h, d, field, defaultDistroOK)
			if !d.IP.IsValid() {
				continue
			}
			if prev, dup := hostIPs[d.IP]; dup {
				add(d.IPPos.Errorf(field+".ip", "%s is already pinned at %s", d.IP, prev))
				continue
			}
			hostIPs[d.IP] = d.IPPos
			if h.Network.Subnet.IsValid() {
				k := ipKey{h.Network.Subnet, d.IP}
				if prev, dup := fleetIPs[k]; dup {
					add(d.IPPos.Errorf(field+".ip", "%s is already pinned at %s on the same subnet %s", d.IP, prev, h.Network.Subnet))
				} else {
					fleetIPs[k] = d.IPPos
				}
			}
		}
	}
}

// renderedName is a container name a decky renders, for collision messages.
type renderedName struct {
	what string // "the base container of decky web"
	pos  Pos
}

// ContainerNames returns the names of the containers decky d renders: the
// base is named after the decky, each service container
// "<decky>-<service>" (DECNET's shape; package apply renders it).
func (d *Decky) ContainerNames() []string {
	out := make([]string, 0, 1+len(d.Services))
	out = append(out, d.Name)
	for _, s := range d.Services {
		out = append(out, d.Name+"-"+s)
	}
	return out
}

// checkContainerNames refuses a decky whose containers would take a name
// another decky's container renders (decky "web" with service "ssh" and a
// decky "web-ssh" both render "web-ssh": they would replace each other on
// every pass). The check is fleet-wide, like decky names: a decky may move
// to another worker, and the master tells containers apart by name.
func checkContainerNames(d *Decky, field string, seen map[string]renderedName, errs *Errors) {
	for i, name := range d.ContainerNames() {
		r := renderedName{what: "the base container of decky " + d.Name, pos: d.Pos}
		fld := field + ".name"
		if i > 0 {
			r.what = fmt.Sprintf("the container of service %s of decky %s", d.Services[i-1], d.Name)
			fld = fmt.Sprintf("%s.services[%d]", field, i-1)
		}
		if prev, dup := seen[name]; dup {
			*errs = append(*errs, d.Pos.Errorf(fld, "container name %q (%s) is already %s at %s; rename one decky", name, r.what, prev.what, prev.pos))
			continue
		}
		seen[name] = r
	}
}

// mergeNetwork applies a host's overrides to defaults: the non-zero
// fields, and subnet or gateway whenever the host writes them (so a host
// can say "auto" where fleet.yaml is explicit).
func mergeNetwork(def, over Network, set netPos) Network {
	n := def
	if over.Name != "" {
		n.Name = over.Name
	}
	if over.Driver != "" {
		n.Driver = over.Driver
	}
	if over.Interface != "" {
		n.Interface = over.Interface
	}
	if set.subnet.File != "" {
		n.Subnet = over.Subnet
		// A host moving to its own subnet cannot inherit the default gateway.
		if set.gateway.File == "" && def.Gateway.IsValid() && (!over.Subnet.IsValid() || !over.Subnet.Contains(def.Gateway)) {
			n.Gateway = netip.Addr{}
		}
	}
	if set.gateway.File != "" {
		n.Gateway = over.Gateway
	}
	return n
}

// ReservedIn reports why a can never be a decky address in subnet sn with
// gateway gw ("" when it can be).
func ReservedIn(a netip.Addr, sn netip.Prefix, gw netip.Addr) string {
	switch {
	case !sn.Contains(a):
		return fmt.Sprintf("is outside the subnet %s", sn)
	case a == sn.Masked().Addr():
		return fmt.Sprintf("is the network address of %s", sn)
	case a == Broadcast(sn):
		return fmt.Sprintf("is the broadcast address of %s", sn)
	case gw.IsValid() && a == gw:
		return "is the gateway address"
	}
	return ""
}

// checkNetwork checks a gateway against its subnet, reporting at the
// gateway's line (or the subnet's, when only that is written here). from
// names where an inherited gateway comes from.
func checkNetwork(n Network, at netPos, field, from string, errs *Errors) {
	sn, gw := n.Subnet, n.Gateway
	if !sn.IsValid() || !gw.IsValid() {
		return
	}
	pos := at.gateway
	if pos.File == "" {
		pos = at.subnet
	}
	var why string
	if !sn.Contains(gw) {
		why = fmt.Sprintf("is outside the subnet %s", sn)
	} else {
		why = ReservedIn(gw, sn, netip.Addr{})
	}
	if why != "" {
		*errs = append(*errs, pos.Errorf(field+".gateway", "gateway %s%s %s", gw, from, why))
	}
}

func checkHostNetwork(h *Host, errs *Errors) {
	// The defaults were checked in fleet.yaml; a host is only blamed for
	// what it writes itself.
	if h.netPos.subnet.File != "" || h.netPos.gateway.File != "" {
		from := ""
		if h.netPos.gateway.File == "" {
			from = " (from fleet.yaml defaults.network)"
		}
		checkNetwork(h.Network, h.netPos, "network", from, errs)
	}
	if sn := h.Network.Subnet; h.IPPool != nil && sn.IsValid() {
		if !sn.Contains(h.IPPool.First) || !sn.Contains(h.IPPool.Last) {
			*errs = append(*errs, h.poolPos.Errorf("ip_pool", "pool %s is not inside the subnet %s", h.IPPool.Text, sn))
		}
	}
}

func checkDecky(l *loader, f *Fleet, h *Host, d *Decky, field string, defaultDistroOK bool) {
	errs := &l.errs
	add := func(pos Pos, fld, format string, args ...any) {
		*errs = append(*errs, pos.Errorf(fld, format, args...))
	}
	inherited := d.Distro == ""
	if inherited {
		d.Distro = f.Defaults.Distro
	}
	switch {
	case d.Distro == "":
		add(d.Pos, field+".distro", "no distro named and fleet.yaml sets no defaults.distro")
	case f.Distros[d.Distro] == nil && (!inherited || defaultDistroOK):
		add(d.Pos, field+".distro", "distro %q is not in the distros catalog%s", d.Distro, hint(sortedKeys(f.Distros)))
	}
	for i, s := range d.Services {
		if f.Services[s] == nil {
			add(d.Pos, fmt.Sprintf("%s.services[%d]", field, i), "service %q is not in the services catalog%s", s, catalogHint(f))
		}
	}
	if d.IP.IsValid() && h.Network.Subnet.IsValid() {
		if why := ReservedIn(d.IP, h.Network.Subnet, h.Network.Gateway); why != "" {
			add(d.IPPos, field+".ip", "%s %s", d.IP, why)
		}
	}
	checkServiceConfig(l, f, d, field)
}

func catalogHint(f *Fleet) string { return hint(sortedKeys(f.Services)) }

// hint lists the known names for a "not in the catalog" message.
func hint(known []string) string {
	if len(known) == 0 {
		return ""
	}
	return " (known: " + strings.Join(known, ", ") + ")"
}

// checkServiceConfig types every service_config value against the
// catalog and fills in defaults, so apply never sees an unchecked value.
func checkServiceConfig(l *loader, f *Fleet, d *Decky, field string) {
	errs := &l.errs
	w := l.walker(d.file)
	runs := map[string]bool{}
	for _, s := range d.Services {
		runs[s] = true
	}
	if d.rawConfig != nil {
		ps, _ := w.pairs(d.rawConfig, d.rawConfigField)
		for _, p := range ps {
			svc := f.Services[p.key]
			switch {
			case svc == nil:
				w.fail(p.k, p.field, "service %q is not in the services catalog", p.key)
				continue
			case !runs[p.key]:
				w.fail(p.k, p.field, "configures service %q, which this decky does not run", p.key)
				continue
			}
			vals := map[string]Value{}
			kps, _ := w.pairs(p.v, p.field)
			for _, kp := range kps {
				key := svc.Config[kp.key]
				if key == nil {
					if len(svc.Config) == 0 {
						w.fail(kp.k, kp.field, "service %q accepts no service_config keys", p.key)
					} else {
						w.fail(kp.k, kp.field, "service %q has no config key %q (accepts: %s)", p.key, kp.key, strings.Join(sortedKeys(svc.Config), ", "))
					}
					continue
				}
				if key.Type == "" {
					continue // the catalog entry itself is broken and reported
				}
				if v, ok := w.value(kp.v, kp.field, key); ok {
					vals[kp.key] = v
				}
			}
			d.ServiceConfig[p.key] = vals
		}
	}
	for _, s := range d.Services {
		svc := f.Services[s]
		if svc == nil {
			continue
		}
		vals := d.ServiceConfig[s]
		if vals == nil {
			vals = map[string]Value{}
		}
		for _, kn := range sortedKeys(svc.Config) {
			key := svc.Config[kn]
			if _, set := vals[kn]; set {
				continue
			}
			switch {
			case key.Default != nil:
				vals[kn] = *key.Default
			case key.Required:
				*errs = append(*errs, d.Pos.Errorf(fmt.Sprintf("%s.service_config.%s.%s", field, s, kn), "required by service %q but not set", s))
			}
		}
		if len(vals) > 0 {
			d.ServiceConfig[s] = vals
		} else {
			delete(d.ServiceConfig, s)
		}
	}
	d.rawConfig = nil
}

// checkBuild verifies that a build context is a real directory inside the
// repository holding its Dockerfile, and that no symlink in it points
// outside the repository (which would let a commit read the worker's
// files into an image).
func checkBuild(ctx context.Context, fsys fs.FS, b *Build, field string, errs *Errors) {
	if b == nil || b.Context == "" {
		return
	}
	add := func(fld, format string, args ...any) {
		*errs = append(*errs, b.Pos.Errorf(fld, format, args...))
	}
	// Every component of the context path must be a real directory: a
	// symlinked parent would move the whole context out of the repo.
	parts := strings.Split(b.Context, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		if p == "." {
			continue
		}
		if isSymlink(fsys, p) {
			add(field, "%q is a symlink; build contexts must be real directories inside the repository", p)
			return
		}
	}
	fi, err := fs.Stat(fsys, b.Context)
	if err != nil {
		add(field, "build context %q does not exist in the repository", b.Context)
		return
	}
	if !fi.IsDir() {
		add(field, "build context %q is not a directory", b.Context)
		return
	}
	df := path.Join(b.Context, b.Dockerfile)
	if dfi, err := fs.Stat(fsys, df); err != nil || !dfi.Mode().IsRegular() || isSymlink(fsys, df) {
		add(field, "build context %q has no regular file %s", b.Context, b.Dockerfile)
	}
	rl, canReadLinks := fsys.(fs.ReadLinkFS)
	_ = fs.WalkDir(fsys, b.Context, func(p string, de fs.DirEntry, err error) error {
		if ctx.Err() != nil {
			return fs.SkipAll // a large context must not hold up Ctrl-C
		}
		if err != nil {
			add(field, "cannot read %s: %v", p, err)
			return nil
		}
		if t := de.Type(); t&(fs.ModeNamedPipe|fs.ModeSocket|fs.ModeDevice|fs.ModeIrregular) != 0 {
			// The worker reads the whole context to build it: a named pipe
			// would block it, a device read the worker's hardware.
			add(field, "%s is %s; a build context holds only regular files, directories and symlinks", p, fileKind(t))
			return nil
		}
		if de.Type()&fs.ModeSymlink == 0 || !canReadLinks {
			return nil
		}
		target, err := rl.ReadLink(p)
		if err != nil {
			add(field, "cannot read symlink %s: %v", p, err)
			return nil
		}
		if strings.HasPrefix(target, "/") {
			add(field, "symlink %s points to absolute path %s, outside the repository", p, target)
			return nil
		}
		if resolved := path.Join(path.Dir(p), target); !fs.ValidPath(resolved) {
			add(field, "symlink %s -> %s leaves the repository", p, target)
		}
		return nil
	})
}
