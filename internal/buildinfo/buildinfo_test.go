package buildinfo

import (
	"bytes"
	"encoding/json"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	vcs := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2026-11-29T10:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	for _, tc := range []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  Info
	}{
		{name: "stamped wins over vcs", version: "v1.2.0", commit: "feedface", date: "2026-11-01T00:00:00Z", bi: vcs,
			want: Info{Version: "v1.2.0", Commit: "feedface", BuildDate: "2026-11-01T00:00:00Z", Go: "go1.26.8"}},
		{name: "vcs fallback, dirty tree", bi: vcs,
			want: Info{Version: DevVersion, Commit: "0123456789abcdef0123456789abcdef01234567-dirty", BuildDate: "2026-11-29T10:00:00Z", Go: "go1.26.8"}},
		{name: "module version from a tag", bi: &debug.BuildInfo{Main: debug.Module{Version: "v1.3.0"}},
			want: Info{Version: "v1.3.0", Commit: "unknown", BuildDate: "unknown", Go: runtime.Version()}},
		{name: "nothing known",
			want: Info{Version: DevVersion, Commit: "unknown", BuildDate: "unknown", Go: runtime.Version()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.want.OS, tc.want.Arch = runtime.GOOS, runtime.GOARCH
			if got := read(tc.version, tc.commit, tc.date, tc.bi); got != tc.want {
				t.Errorf("read:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// The JSON keys are an interface (packaging scripts read them).
func TestWriteJSONKeys(t *testing.T) {
	var b bytes.Buffer
	if err := Read().Write(&b, true); err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "commit", "build_date", "go", "os", "arch"} {
		if m[k] == "" {
			t.Errorf("key %q missing or empty in %s", k, b.String())
		}
	}
	if len(m) != 6 {
		t.Errorf("want exactly 6 keys, got %v", m)
	}
	b.Reset()
	if err := Read().Write(&b, false); err != nil || !strings.HasPrefix(b.String(), "pull-agent "+Read().Version+" ") {
		t.Errorf("plain line %q %v", b.String(), err)
	}
}
