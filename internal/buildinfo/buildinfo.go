package buildinfo

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Set by the linker (-X); empty in an unstamped build.
var (
	version   string
	commit    string
	buildDate string
)

// DevVersion is the version of a build that was neither stamped nor built
// from a tagged module version.
const DevVersion = "0.1.0-dev"

// Info is what `pull-agent version --json` prints.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`     // 40-hex revision; "-dirty" when built from a modified tree
	BuildDate string `json:"build_date"` // RFC 3339; the commit's time when not stamped
	Go        string `json:"go"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
}

// Read returns the running binary's build information: the stamped values,
// else the toolchain's VCS settings, else "unknown".
func Read() Info {
	bi, _ := debug.ReadBuildInfo()
	return read(version, commit, buildDate, bi)
}

// read fills each field from the stamp when set, else from bi (which may
// be nil).
func read(version, commit, date string, bi *debug.BuildInfo) Info {
	in := Info{Version: version, Commit: commit, BuildDate: date, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if bi != nil {
		vcs := map[string]string{}
		for _, s := range bi.Settings {
			vcs[s.Key] = s.Value
		}
		if in.Commit == "" && vcs["vcs.revision"] != "" {
			in.Commit = vcs["vcs.revision"]
			if vcs["vcs.modified"] == "true" {
				in.Commit += "-dirty"
			}
		}
		if in.BuildDate == "" {
			in.BuildDate = vcs["vcs.time"]
		}
		// Go 1.24+ derives the main module's version from the VCS tag
		// (v1.2.0, or a pseudo-version); "(devel)" means it could not.
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			in.Go = bi.GoVersion
		}
	}
	if in.Version == "" {
		in.Version = DevVersion
	}
	if in.Commit == "" {
		in.Commit = "unknown"
	}
	if in.BuildDate == "" {
		in.BuildDate = "unknown"
	}
	return in
}

// String is the one line of plain `pull-agent version`; it starts with
// "pull-agent VERSION", as it always has.
func (in Info) String() string {
	return fmt.Sprintf("pull-agent %s (commit %s, built %s, %s %s/%s)", in.Version, in.Commit, in.BuildDate, in.Go, in.OS, in.Arch)
}

// Write prints the information as one line, or as indented JSON.
func (in Info) Write(w io.Writer, asJSON bool) error {
	if !asJSON {
		_, err := fmt.Fprintln(w, in.String())
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(in)
}
