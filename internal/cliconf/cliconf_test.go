package cliconf

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Flags may sit before, between and after positional arguments; a bad
// flag anywhere is a *UsageError.
func TestParseInterleaved(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantPos []string
		wantDB  string
		wantErr bool
	}{
		{args: []string{"add", "worker-a", "--db", "m.db"}, wantPos: []string{"add", "worker-a"}, wantDB: "m.db"},
		{args: []string{"--db", "x.db", "list"}, wantPos: []string{"list"}, wantDB: "x.db"},
		{args: []string{"revoke", "--db=y.db", "alice"}, wantPos: []string{"revoke", "alice"}, wantDB: "y.db"},
		{args: nil, wantDB: "default.db"},
		{args: []string{"add", "--nope"}, wantErr: true},
	} {
		var out bytes.Buffer
		f := Env("token", "token", &out)
		var db string
		f.String(&db, "db", "default.db", "the store")
		pos, err := f.ParseInterleaved(tc.args)
		if tc.wantErr {
			if ue := (*UsageError)(nil); !errors.As(err, &ue) {
				t.Errorf("%q: error %v, want a *UsageError", tc.args, err)
			}
			continue
		}
		if err != nil || !slices.Equal(pos, tc.wantPos) || db != tc.wantDB {
			t.Errorf("%q: pos %q db %q err %v; want %q %q", tc.args, pos, db, err, tc.wantPos, tc.wantDB)
		}
	}
}

// A command without a config file does not claim to read one in -h.
func TestHelpHeading(t *testing.T) {
	for _, tc := range []struct {
		f    func(*bytes.Buffer) *Flags
		file bool
	}{
		{func(b *bytes.Buffer) *Flags { return Env("status", "status", b) }, false},
		{func(b *bytes.Buffer) *Flags { return New("once", "once", b, nil) }, true},
	} {
		var b bytes.Buffer
		f := tc.f(&b)
		var s string
		f.String(&s, "host", "", "name")
		if err := f.Parse([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
			t.Fatal(err)
		}
		if got := strings.Contains(b.String(), "config file"); got != tc.file {
			t.Errorf("mentions the config file: %v, want %v:\n%s", got, tc.file, b.String())
		}
		if !strings.Contains(b.String(), "(env PULL_AGENT_HOST)") {
			t.Errorf("help does not name the variable:\n%s", b.String())
		}
	}
}

type observer struct {
	bytes.Buffer
	sets []*flag.FlagSet
}

func (o *observer) ObserveFlagSet(fs *flag.FlagSet) { o.sets = append(o.sets, fs) }

func TestObserverSeesTheFlagSet(t *testing.T) {
	o := &observer{}
	f := Env("reap", "reap", o)
	var yes bool
	f.Bool(&yes, "yes", false, "really")
	if len(o.sets) != 1 || o.sets[0].Lookup("yes") == nil {
		t.Fatalf("observer saw %v", o.sets)
	}
}

func TestLocate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(good, []byte("host: w1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "none.yaml")
	for _, tc := range []struct {
		name     string
		args     []string
		env, def string
		want     string // Path of the file found; "" none
		wantErr  bool
	}{
		{name: "default absent is fine", def: missing},
		{name: "default present", def: good, want: good},
		{name: "flag", args: []string{"--host", "x", "--config", good}, def: missing, want: good},
		{name: "flag with =", args: []string{"-config=" + good}, def: missing, want: good},
		{name: "explicit empty reads none", args: []string{"--config="}, def: good},
		{name: "env", env: good, def: missing, want: good},
		{name: "explicit missing fails", args: []string{"--config", missing}, def: good, wantErr: true},
		{name: "after -- is an argument", args: []string{"--", "--config", missing}, def: missing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("PULL_AGENT_CONFIG", tc.env)
			}
			f, err := Locate(tc.args, tc.def)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if f != nil {
				got = f.Path
			}
			if got != tc.want {
				t.Errorf("found %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLogOptions(t *testing.T) {
	for _, tc := range []struct {
		o       LogOptions
		wantErr string
	}{
		{o: LogOptions{"debug", "json"}},
		{o: LogOptions{"info", "TEXT"}},
		{o: LogOptions{"loud", "text"}, wantErr: "--log-level"},
		{o: LogOptions{"info", "xml"}, wantErr: "--log-format"},
	} {
		var b bytes.Buffer
		l, err := tc.o.Logger(&b)
		if tc.wantErr != "" {
			if ue := (*UsageError)(nil); !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%+v: error %v, want a usage error naming %s", tc.o, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		l.Debug("hello")
		if (tc.o.Level == "debug") != strings.Contains(b.String(), "hello") {
			t.Errorf("%+v: output %q", tc.o, b.String())
		}
	}
}
