package memlimit

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"testing/fstest"
)

func file(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }

func TestDerive(t *testing.T) {
	const mib = 1 << 20
	v2 := "0::/system.slice/pull-agent.service\n"
	v1 := "12:pids:/x\n9:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n"
	tests := []struct {
		name       string
		env        string
		envSet     bool
		files      fstest.MapFS
		wantBytes  int64
		wantSource Source
		wantFile   string
	}{
		{name: "GOMEMLIMIT set wins over a cgroup limit", env: "64MiB", envSet: true,
			files:     fstest.MapFS{"proc/self/cgroup": file(v2), "sys/fs/cgroup/system.slice/pull-agent.service/memory.max": file("104857600\n")},
			wantBytes: -1, wantSource: FromEnv},
		{name: "GOMEMLIMIT=off wins too", env: "off", envSet: true, wantBytes: -1, wantSource: FromEnv},
		{name: "GOMEMLIMIT empty counts as unset", env: "", envSet: true, wantBytes: DefaultLimit, wantSource: FromDefault},
		{name: "cgroup v2 max: no limit, the default", files: fstest.MapFS{
			"proc/self/cgroup": file(v2), "sys/fs/cgroup/system.slice/pull-agent.service/memory.max": file("max\n"),
			"sys/fs/cgroup/system.slice/memory.max": file("max\n")},
			wantBytes: DefaultLimit, wantSource: FromDefault},
		{name: "cgroup v2 number: 90% of it", files: fstest.MapFS{
			"proc/self/cgroup": file(v2), "sys/fs/cgroup/system.slice/pull-agent.service/memory.max": file("209715200\n")},
			wantBytes: 180 * mib, wantSource: FromCgroup2, wantFile: "/sys/fs/cgroup/system.slice/pull-agent.service/memory.max"},
		{name: "cgroup v2: a parent's tighter limit counts", files: fstest.MapFS{
			"proc/self/cgroup": file(v2),
			"sys/fs/cgroup/system.slice/pull-agent.service/memory.max": file("max"),
			"sys/fs/cgroup/system.slice/memory.max":                    file("104857600")},
			wantBytes: 90 * mib, wantSource: FromCgroup2, wantFile: "/sys/fs/cgroup/system.slice/memory.max"},
		{name: "cgroup v2 in a container's namespace: the mount root's file", files: fstest.MapFS{
			"proc/self/cgroup": file("0::/\n"), "sys/fs/cgroup/memory.max": file("524288000\n")},
			wantBytes: 450 * mib, wantSource: FromCgroup2, wantFile: "/sys/fs/cgroup/memory.max"},
		{name: "cgroup v1 file", files: fstest.MapFS{
			"proc/self/cgroup": file(v1), "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": file("314572800\n")},
			wantBytes: 270 * mib, wantSource: FromCgroup1, wantFile: "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes"},
		{name: "cgroup v1 unlimited (page-rounded LONG_MAX): the default", files: fstest.MapFS{
			"proc/self/cgroup": file(v1), "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": file("9223372036854771712\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes": file("9223372036854771712\n")},
			wantBytes: DefaultLimit, wantSource: FromDefault},
		{name: "cgroup v1 in a container: the listed path is absent, the mount root holds the limit", files: fstest.MapFS{
			"proc/self/cgroup": file(v1), "sys/fs/cgroup/memory/memory.limit_in_bytes": file("104857600\n")},
			wantBytes: 90 * mib, wantSource: FromCgroup1, wantFile: "/sys/fs/cgroup/memory/memory.limit_in_bytes"},
		{name: "malformed limit file is ignored", files: fstest.MapFS{
			"proc/self/cgroup": file(v2), "sys/fs/cgroup/system.slice/pull-agent.service/memory.max": file("lots\n")},
			wantBytes: DefaultLimit, wantSource: FromDefault},
		{name: "no /proc: the default", files: fstest.MapFS{}, wantBytes: DefaultLimit, wantSource: FromDefault},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.files == nil {
				tt.files = fstest.MapFS{}
			}
			got := Derive(tt.env, tt.envSet, tt.files)
			if got.Bytes != tt.wantBytes || got.Source != tt.wantSource || got.Cgroup != tt.wantFile {
				t.Errorf("Derive = %+v, want %d bytes from %s (%q)", got, tt.wantBytes, tt.wantSource, tt.wantFile)
			}
		})
	}
}

// TestSetDefault checks the limit reaches the runtime, and that an
// environment GOMEMLIMIT is left as the runtime parsed it.
func TestSetDefault(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	t.Setenv("GOMEMLIMIT", "")
	l := SetDefault()
	if l.Source == FromEnv {
		t.Fatalf("empty GOMEMLIMIT taken as set: %+v", l)
	}
	if got := debug.SetMemoryLimit(-1); got != l.Bytes || got <= 0 || got == math.MaxInt64 {
		t.Errorf("runtime limit %d, want %d (%s)", got, l.Bytes, l)
	}

	debug.SetMemoryLimit(123 << 20) // as if the runtime had read GOMEMLIMIT=123MiB
	t.Setenv("GOMEMLIMIT", "123MiB")
	l = SetDefault()
	if l.Source != FromEnv || l.Bytes != 123<<20 {
		t.Errorf("with GOMEMLIMIT set: %+v, want the runtime's 123 MiB from the environment", l)
	}
	if got := debug.SetMemoryLimit(-1); got != 123<<20 {
		t.Errorf("SetDefault changed the environment's limit to %d", got)
	}
}

// TestAfterPassReturnsMemory: what a pass freed leaves the heap's
// resident pages (HeapReleased grows), measured by the runtime itself.
func TestAfterPassReturnsMemory(t *testing.T) {
	var before, after debugStats
	keep := make([][]byte, 0, 64)
	for range 64 {
		keep = append(keep, make([]byte, 1<<20))
	}
	for _, b := range keep {
		b[0] = 1
	}
	keep = nil
	before.read()
	AfterPass()
	after.read()
	if after.released < before.released+32<<20 {
		t.Errorf("HeapReleased %d -> %d after AfterPass, want at least 32 MiB more returned", before.released, after.released)
	}
	_ = keep
}

type debugStats struct{ released uint64 }

func (s *debugStats) read() {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	s.released = m.HeapReleased
}
