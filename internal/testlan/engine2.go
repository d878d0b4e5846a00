package testlan

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
)

// SecondEngine starts another Docker daemon with its own data, state and
// containerd, as a second worker on the same machine, and returns its
// DOCKER_HOST. Docker refuses two networks with overlapping pools on one
// engine, so two workers on one LAN need two engines. Its containers are
// removed and the daemon stopped at the end of the test.
func SecondEngine(t testing.TB) string {
	t.Helper()
	RequireDocker(t)
	dir, err := os.MkdirTemp("", "pa-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	sock := "unix://" + filepath.Join(dir, "docker.sock")
	cmd := exec.Command("dockerd", "--data-root", filepath.Join(dir, "root"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "pid"), "-H", sock, "--bridge=none", "--iptables=false", "--ip-masq=false")
	logf, _ := os.Create(filepath.Join(dir, "dockerd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting a second dockerd: %v", err)
	}
	c, err := client.NewClientWithOpts(client.WithHost(sock), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if list, err := c.ContainerList(ctx, container.ListOptions{All: true}); err == nil {
			for _, ct := range list {
				_ = c.ContainerRemove(ctx, ct.ID, container.RemoveOptions{Force: true})
			}
		}
		c.Close()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		_ = os.RemoveAll(dir)
	})
	for deadline := time.Now().Add(60 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Ping(ctx)
		cancel()
		if err == nil {
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("second dockerd did not come up: %v (log in %s)", err, dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
