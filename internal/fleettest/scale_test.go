package fleettest

import (
	"fmt"
	"strings"
	"testing"
)

// fatalTB records a Fatalf and stops the helper there, as testing does.
type fatalTB struct {
	testing.TB
	msg string
}

type stopped struct{}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(stopped{})
}

func TestScaleN(t *testing.T) {
	for _, tc := range []struct {
		name, env string
		want      int
		fatal     string
	}{
		{name: "unset is ten", env: "", want: 10},
		{name: "a size scale.sh runs", env: "50", want: 50},
		{name: "the most a /24 holds", env: "250", want: 250},
		{name: "more than a /24 holds", env: "251", fatal: `SCALE_N="251": want 1 to 250`},
		{name: "zero", env: "0", fatal: `SCALE_N="0"`},
		{name: "not a number", env: "ten", fatal: `SCALE_N="ten"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("SCALE_N", tc.env)
			tb := &fatalTB{TB: t}
			got := func() (n int) {
				defer func() {
					if r := recover(); r != nil && r != (stopped{}) {
						panic(r)
					}
				}()
				return ScaleN(tb)
			}()
			if tc.fatal != "" {
				if !strings.Contains(tb.msg, tc.fatal) {
					t.Fatalf("failure %q, want it to say %q", tb.msg, tc.fatal)
				}
				return
			}
			if tb.msg != "" || got != tc.want {
				t.Fatalf("ScaleN = %d (failure %q), want %d", got, tb.msg, tc.want)
			}
		})
	}
}

func TestScaleLANAndDeckies(t *testing.T) {
	for _, tc := range []struct {
		n    int
		bits int
	}{{1, 0}, {40, 0}, {41, 24}, {250, 24}} {
		if got := ScaleLAN(tc.n).Bits; got != tc.bits {
			t.Errorf("ScaleLAN(%d).Bits = %d, want %d (0: testlan's default /26)", tc.n, got, tc.bits)
		}
	}
	d := Deckies(250, "ssh,http")
	if len(d) != 250 || d[0] != [2]string{"d000", "ssh,http"} || d[249] != [2]string{"d249", "ssh,http"} {
		t.Fatalf("Deckies(250): %d, first %v, last %v", len(d), d[0], d[len(d)-1])
	}
}
