package state

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSaveLoadAndGuards(t *testing.T) {
	dir := t.TempDir()
	s, err := Load(dir, "w")
	if err != nil || len(s.Addresses) != 0 {
		t.Fatalf("empty state: %+v %v", s, err)
	}
	s.Addresses["a"] = Address{IP: netip.MustParseAddr("198.51.100.10"), MAC: "02:00:00:00:00:01"}
	s.Addresses["old"] = Address{IP: netip.MustParseAddr("192.0.2.10")}
	s.LastCommit = "abc"
	if err := s.Save(dir); err != nil {
		t.Fatal(err)
	}
	s2, err := Load(dir, "w")
	if err != nil || s2.LastCommit != "abc" || s2.Addresses["a"].MAC != "02:00:00:00:00:01" {
		t.Fatalf("round trip: %+v %v", s2, err)
	}
	prev := s2.Previous(netip.MustParsePrefix("198.51.100.0/24"))
	if len(prev) != 1 || prev["a"] != netip.MustParseAddr("198.51.100.10") {
		t.Fatalf("addresses of another subnet must be forgotten: %v", prev)
	}
	if _, err := Load(dir, "other"); err == nil || !strings.Contains(err.Error(), "belongs to host") {
		t.Fatalf("another host's state dir must be refused, got %v", err)
	}
	os.WriteFile(filepath.Join(dir, File), []byte("{not json"), 0o600)
	if _, err := Load(dir, "w"); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt state: %v", err)
	}
}

func TestLockIsExclusive(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(dir); err == nil {
		t.Fatal("a second process got the lock")
	}
	l.Release()
	l2, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	l2.Release()
}
