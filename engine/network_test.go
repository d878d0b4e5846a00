package engine

import (
	"net/netip"
	"testing"
)

// ipvlan cannot run on the build machines (no ipvlan in their kernel), so
// its rendering is what is tested; macvlan also runs end to end.
func TestNetworkCreateOptions(t *testing.T) {
	spec := NetworkSpec{Name: "decnet_lan", Parent: "wlan0", Subnet: netip.MustParsePrefix("192.0.2.0/24"), Gateway: netip.MustParseAddr("192.0.2.1")}
	tests := []struct {
		driver, modeKey, mode string
	}{
		{"ipvlan", "ipvlan_mode", "l2"},
		{"macvlan", "macvlan_mode", "bridge"},
	}
	for _, tt := range tests {
		spec.Driver = tt.driver
		o := networkCreateOptions(spec, "worker-a", "h1")
		if o.Driver != tt.driver || o.Options["parent"] != "wlan0" || o.Options[tt.modeKey] != tt.mode || len(o.Options) != 2 {
			t.Errorf("%s: driver %q options %v", tt.driver, o.Driver, o.Options)
		}
		if c := o.IPAM.Config; len(c) != 1 || c[0].Subnet != "192.0.2.0/24" || c[0].Gateway != "192.0.2.1" || c[0].IPRange != "" {
			t.Errorf("%s: IPAM %+v", tt.driver, o.IPAM)
		}
		if o.Labels[LabelOwner] != "worker-a" || o.Labels[LabelNetworkSpec] != "h1" {
			t.Errorf("%s: labels %v", tt.driver, o.Labels)
		}
	}
}
