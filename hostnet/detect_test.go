package hostnet

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/internal/testlan"
)

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestDetectNamedInterfaceUsesItsOwnGateway(t *testing.T) {
	l := testlan.New(t, testlan.Options{DefaultRoute: true})
	d, err := NewDetector()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	lan, err := d.Detect(context.Background(), Options{Interface: l.Parent})
	if err != nil {
		t.Fatal(err)
	}
	// The machine's real default route (lower metric, another NIC) must not
	// leak its gateway into the decoy LAN.
	if lan.Interface != l.Parent || lan.Subnet != l.Subnet || lan.Gateway != l.Gateway {
		t.Errorf("got %+v, want interface %s subnet %s gateway %s", lan, l.Parent, l.Subnet, l.Gateway)
	}
	if len(lan.HostAddrs) != 1 || lan.HostAddrs[0] != l.Host {
		t.Errorf("host addresses = %v, want [%s]", lan.HostAddrs, l.Host)
	}
}

func TestDetectInNamespace(t *testing.T) {
	l := testlan.New(t, testlan.Options{})
	peer := "pb" + strings.TrimPrefix(l.Parent, "pa")
	d, err := NewDetectorAt(l.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()

	t.Run("no default route names the override", func(t *testing.T) {
		_, err := d.Detect(ctx, Options{})
		var de *DetectError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), "no IPv4 default route") || !strings.Contains(err.Error(), "--interface") {
			t.Fatalf("want DetectError naming --interface, got %v", err)
		}
	})
	t.Run("named interface without a route needs a gateway", func(t *testing.T) {
		_, err := d.Detect(ctx, Options{Interface: peer})
		if !IsDetectError(err) || !strings.Contains(err.Error(), "network.gateway") {
			t.Fatalf("want DetectError naming network.gateway, got %v", err)
		}
		lan, err := d.Detect(ctx, Options{Interface: peer, Gateway: l.Gateway})
		if err != nil || lan.Gateway != l.Gateway {
			t.Fatalf("explicit gateway not used: %+v %v", lan, err)
		}
	})
	t.Run("unknown interface", func(t *testing.T) {
		_, err := d.Detect(ctx, Options{Interface: "nosuch0"})
		if !IsDetectError(err) || !strings.Contains(err.Error(), `"nosuch0" does not exist`) {
			t.Fatalf("got %v", err)
		}
	})

	ipCmd(t, "-n", l.NS, "route", "add", "default", "via", l.Gateway.String(), "dev", peer)
	// A secondary address must not be taken as the primary network.
	second := l.Peer.Next().Next()
	ipCmd(t, "-n", l.NS, "addr", "add", netip.PrefixFrom(second, l.Subnet.Bits()).String(), "dev", peer)

	t.Run("default route interface", func(t *testing.T) {
		lan, err := d.Detect(ctx, Options{Interface: "auto"})
		if err != nil {
			t.Fatal(err)
		}
		want := []netip.Addr{l.Peer, second}
		if lan.Interface != peer || lan.Subnet != l.Subnet || lan.Gateway != l.Gateway || len(lan.HostAddrs) != 2 || lan.HostAddrs[0] != want[0] || lan.HostAddrs[1] != want[1] {
			t.Fatalf("got %+v", lan)
		}
	})

	t.Run("equal default routes on two interfaces are ambiguous", func(t *testing.T) {
		ipCmd(t, "-n", l.NS, "link", "add", "pdx0", "type", "veth", "peer", "name", "pdx1")
		// In the namespace only: nothing here reaches the machine's own routes.
		ipCmd(t, "-n", l.NS, "addr", "add", "192.0.2.5/24", "dev", "pdx0")
		ipCmd(t, "-n", l.NS, "link", "set", "pdx0", "up")
		ipCmd(t, "-n", l.NS, "link", "set", "pdx1", "up")
		ipCmd(t, "-n", l.NS, "route", "append", "default", "via", "192.0.2.1", "dev", "pdx0")
		_, err := d.Detect(ctx, Options{})
		if !IsDetectError(err) || !strings.Contains(err.Error(), "several interfaces") {
			t.Fatalf("want ambiguity error, got %v", err)
		}
		// An interface without IPv4 names the way out.
		if _, err := d.Detect(ctx, Options{Interface: "pdx1", Gateway: l.Gateway}); !IsDetectError(err) || !strings.Contains(err.Error(), "has no global IPv4 address") || !strings.Contains(err.Error(), "--interface") {
			t.Fatalf("want a no-IPv4 DetectError naming --interface, got %v", err)
		}
		// Naming one resolves it, each with its own gateway.
		lan, err := d.Detect(ctx, Options{Interface: "pdx0"})
		if err != nil || lan.Gateway != netip.MustParseAddr("192.0.2.1") || lan.Subnet != netip.MustParsePrefix("192.0.2.0/24") {
			t.Fatalf("got %+v %v", lan, err)
		}
	})
}
