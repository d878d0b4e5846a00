package main

import (
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// `just release` (scripts/release.sh) builds static binaries for amd64 and
// arm64 with checksums, stamped with the version, the commit and its time.
// Static is checked on the ELF itself: no interpreter (PT_INTERP) and no
// shared library (DT_NEEDED); `file` must agree where it is installed.
// Two full builds: skipped under -short only.
func TestReleaseBuildsStaticStampedBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("two full builds; skipped under -short")
	}
	dist := t.TempDir()
	head := func() string {
		out, err := exec.Command("git", "rev-parse", "HEAD").Output()
		if err != nil {
			t.Fatalf("git rev-parse: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	before := head()
	cmd := exec.Command("../../scripts/release.sh")
	cmd.Env = append(os.Environ(), "DIST="+dist, "VERSION=v9.8.7-test")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("release.sh: %v\n%s", err, out)
	}
	after := head()

	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for arch, machine := range want {
		bin := filepath.Join(dist, "pull-agent_v9.8.7-test_linux_"+arch)
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatalf("%s: %v", arch, err)
		}
		if f.Machine != machine {
			t.Errorf("%s: ELF machine %v, want %v", arch, f.Machine, machine)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s: has an interpreter (PT_INTERP): dynamically linked", arch)
			}
		}
		if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
			t.Errorf("%s: needs shared libraries %q (%v)", arch, libs, err)
		}
		f.Close()
		if _, err := exec.LookPath("file"); err == nil {
			out, err := exec.Command("file", "-b", bin).Output()
			if err != nil || !strings.Contains(string(out), "statically linked") {
				t.Errorf("%s: file says %q (%v), want statically linked", arch, out, err)
			}
		}
	}

	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(regexp.MustCompile(`(?m)^[0-9a-f]{64}  pull-agent_v9\.8\.7-test_linux_(amd64|arm64)$`).FindAll(sums, -1)); n != 2 {
		t.Errorf("SHA256SUMS has %d well-formed lines, want 2:\n%s", n, sums)
	}
	check := exec.Command("sha256sum", "-c", "SHA256SUMS")
	check.Dir = dist
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("sha256sum -c: %v\n%s", err, out)
	}
	// A flipped byte must fail the check (it does check).
	b, _ := os.ReadFile(filepath.Join(dist, "pull-agent_v9.8.7-test_linux_arm64"))
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(filepath.Join(dist, "pull-agent_v9.8.7-test_linux_arm64"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := check.CombinedOutput(); err == nil {
		t.Errorf("sha256sum -c passed on a modified binary:\n%s", out)
	}

	if runtime.GOARCH != "amd64" {
		t.Skipf("the stamp is read from the amd64 binary; this machine is %s", runtime.GOARCH)
	}
	out, err := exec.Command(filepath.Join(dist, "pull-agent_v9.8.7-test_linux_amd64"), "version", "--json").Output()
	if err != nil {
		t.Fatalf("version --json: %v\n%s", err, out)
	}
	var v struct {
		Version   string `json:"version"`
		Commit    string `json:"commit"`
		BuildDate string `json:"build_date"`
		OS        string `json:"os"`
		Arch      string `json:"arch"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	commit := strings.TrimSuffix(v.Commit, "-dirty")
	if v.Version != "v9.8.7-test" || (commit != before && commit != after) || v.OS != "linux" || v.Arch != "amd64" {
		t.Errorf("version --json: %s; want version v9.8.7-test, commit %s, linux/amd64", out, before)
	}
	// The build date is the commit's time (reproducible), not the clock.
	ct, err := exec.Command("git", "show", "-s", "--format=%ct", commit).Output()
	if err != nil {
		t.Fatalf("git show %s: %v", commit, err)
	}
	epoch, err := strconv.ParseInt(strings.TrimSpace(string(ct)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if wantDate := time.Unix(epoch, 0).UTC().Format(time.RFC3339); v.BuildDate != wantDate {
		t.Errorf("build_date %q, want the commit's time %s", v.BuildDate, wantDate)
	}
}
