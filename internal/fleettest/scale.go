package fleettest

import (
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/decnet/pull-agent/internal/testlan"
)

// MaxScaleN is the most deckies a scale benchmark puts on one LAN: a /24
// holds 250 of them beside the gateway, the worker and the peer.
const MaxScaleN = 250

// ScaleN is the number of deckies of a scale benchmark: SCALE_N
// (scripts/scale.sh sets 10, 50 and 250), default 10. A value that is not
// a number from 1 to [MaxScaleN] fails the benchmark, naming the variable.
func ScaleN(tb testing.TB) int {
	tb.Helper()
	v := os.Getenv("SCALE_N")
	if v == "" {
		return 10
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxScaleN {
		tb.Fatalf("SCALE_N=%q: want 1 to %d", v, MaxScaleN)
	}
	return n
}

// ScaleLAN is the test LAN for n deckies: testlan's default /26 up to
// 40, a /24 beyond.
func ScaleLAN(n int) testlan.Options {
	if n <= 40 {
		return testlan.Options{}
	}
	return testlan.Options{Bits: 24}
}

// Deckies is n deckies named d000, d001, … each running services (a
// comma-separated list of the example fleet's services), as short name
// and services pairs in file order.
func Deckies(n int, services string) [][2]string {
	out := make([][2]string, n)
	for i := range out {
		out[i] = [2]string{fmt.Sprintf("d%03d", i), services}
	}
	return out
}
