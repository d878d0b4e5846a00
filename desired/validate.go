package desired

import (
	"fmt"
	"io/fs"
	"net/netip"
	"path"
	"strings"
)

// validate runs the checks that need more than one file: catalog
// references, build contexts on disk, network settings merged from
// defaults and host overrides, and fleet-wide uniqueness.
func validate(fsys fs.FS, f *Fleet, errs *Errors) {
	add := func(e Error) { *errs = append(*errs, e) }
	if f.Defaults.Distro != "" && f.Distros[f.Defaults.Distro] == nil {
		add(Error{File: FleetFile, Field: "defaults.distro", Msg: fmt.Sprintf("distro %q is not in the distros catalog", f.Defaults.Distro)})
	}
	for _, name := range sortedKeys(f.Distros) {
		d := f.Distros[name]
		checkBuild(fsys, d.Source.Build, "distros."+name+".build", errs)
	}
	for _, name := range sortedKeys(f.Services) {
		s := f.Services[name]
		checkBuild(fsys, s.Source.Build, "services."+name+".build", errs)
	}

	names := map[string]Pos{}
	type ipKey struct {
		subnet netip.Prefix
		ip     netip.Addr
	}
	fleetIPs := map[ipKey]Pos{}
	for _, hn := range f.HostNames() {
		h := f.Hosts[hn]
		h.Network = mergeNetwork(f.Defaults.Network, h.Network)
		checkHostNetwork(h, errs)
		hostIPs := map[netip.Addr]Pos{}
		for i, d := range h.Deckies {
			field := fmt.Sprintf("deckies[%d]", i)
			if d.Name != "" {
				if prev, dup := names[d.Name]; dup {
					add(d.Pos.Errorf(field+".name", "decky name %q is already used at %s; names must be unique across the fleet", d.Name, prev))
				} else {
					names[d.Name] = d.Pos
				}
			}
			checkDecky(f, h, d, field, errs)
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

// mergeNetwork applies a host's overrides (non-zero fields) to defaults.
func mergeNetwork(def, over Network) Network {
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
	if over.Subnet.IsValid() {
		n.Subnet = over.Subnet
		// A host moving to its own subnet cannot inherit the default gateway.
		if !over.Gateway.IsValid() && def.Gateway.IsValid() && !over.Subnet.Contains(def.Gateway) {
			n.Gateway = netip.Addr{}
		}
	}
	if over.Gateway.IsValid() {
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

func checkHostNetwork(h *Host, errs *Errors) {
	sn, gw := h.Network.Subnet, h.Network.Gateway
	at := Pos{File: h.File}
	if sn.IsValid() && gw.IsValid() {
		if !sn.Contains(gw) {
			*errs = append(*errs, at.Errorf("network.gateway", "gateway %s is outside the subnet %s", gw, sn))
		} else if why := ReservedIn(gw, sn, netip.Addr{}); why != "" {
			*errs = append(*errs, at.Errorf("network.gateway", "gateway %s %s", gw, why))
		}
	}
	if h.IPPool != nil && sn.IsValid() {
		if !sn.Contains(h.IPPool.First) || !sn.Contains(h.IPPool.Last) {
			*errs = append(*errs, at.Errorf("ip_pool", "pool %s is not inside the subnet %s", h.IPPool.Text, sn))
		}
	}
}

func checkDecky(f *Fleet, h *Host, d *Decky, field string, errs *Errors) {
	add := func(pos Pos, fld, format string, args ...any) {
		*errs = append(*errs, pos.Errorf(fld, format, args...))
	}
	if d.Distro == "" {
		d.Distro = f.Defaults.Distro
	}
	switch {
	case d.Distro == "":
		add(d.Pos, field+".distro", "no distro named and fleet.yaml sets no defaults.distro")
	case f.Distros[d.Distro] == nil:
		add(d.Pos, field+".distro", "distro %q is not in the distros catalog", d.Distro)
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
	checkServiceConfig(f, d, field, errs)
}

func catalogHint(f *Fleet) string {
	if len(f.Services) == 0 {
		return ""
	}
	return " (known: " + strings.Join(sortedKeys(f.Services), ", ") + ")"
}

// checkServiceConfig types every service_config value against the
// catalog and fills in defaults, so apply never sees an unchecked value.
func checkServiceConfig(f *Fleet, d *Decky, field string, errs *Errors) {
	w := &walker{file: d.file, errs: errs}
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
func checkBuild(fsys fs.FS, b *Build, field string, errs *Errors) {
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
		if err != nil {
			add(field, "cannot read %s: %v", p, err)
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
