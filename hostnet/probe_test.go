package hostnet

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/decnet/pull-agent/internal/testlan"
)

func TestProbeFindsAddressesInUse(t *testing.T) {
	l := testlan.New(t, testlan.Options{})
	taken := l.Peer.Next().Next().Next()
	l.AddPeerAddr(t, taken)
	free := taken.Next()
	start := time.Now()
	got, err := Probe(context.Background(), l.Parent, []netip.Addr{l.Peer, taken, free}, ProbeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("want conflicts for %s and %s, got %v", l.Peer, taken, got)
	}
	for _, a := range []netip.Addr{l.Peer, taken} {
		c, ok := got[a]
		if !ok || c.MAC == nil || c.Probing {
			t.Errorf("%s: want a conflict with the LAN machine's MAC, got %+v", a, c)
		}
	}
	if _, ok := got[free]; ok {
		t.Errorf("%s is free but was reported in use", free)
	}
	t.Logf("probed 3 addresses in %s", time.Since(start).Round(time.Millisecond))
}
