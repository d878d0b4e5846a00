package gittest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	gliderssh "github.com/gliderlabs/ssh"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHServer is an in-process SSH server that serves git-upload-pack for
// every repository under a root, to one client key. Like a stock OpenSSH
// server it has two host keys, ed25519 and ECDSA, and offers both.
type SSHServer struct {
	Addr         string        // 127.0.0.1:port
	HostKey      ssh.PublicKey // ed25519
	ECDSAHostKey ssh.PublicKey // ecdsa-sha2-nistp256
	ClientKey    string        // private key file the client must use
	// KnownHosts is a known_hosts file holding only HostKey (ed25519) for
	// Addr, as an operator who copied one key would write it.
	KnownHosts string
}

// KnownHostsLine returns a known_hosts line for the server's address with
// the given key.
func (s *SSHServer) KnownHostsLine(key ssh.PublicKey) string {
	return knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, key) + "\n"
}

// URL returns the ssh:// URL of a repository under the root.
func (s *SSHServer) URL(name string) string { return "ssh://git@" + s.Addr + "/" + name }

// NewSSHServer starts the server; it stops at the end of the test.
func NewSSHServer(t testing.TB, root string) *SSHServer {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	ecPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecSigner, err := ssh.NewSignerFromKey(ecPriv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	clientKey := filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", clientKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pubText, _ := os.ReadFile(clientKey + ".pub")
	allowed, _, _, _, err := ssh.ParseAuthorizedKey(pubText)
	if err != nil {
		t.Fatal(err)
	}
	srv := &gliderssh.Server{
		PublicKeyHandler: func(_ gliderssh.Context, key gliderssh.PublicKey) bool {
			return gliderssh.KeysEqual(key, allowed)
		},
		Handler: func(s gliderssh.Session) {
			args := strings.Fields(s.RawCommand())
			if len(args) != 2 || args[0] != "git-upload-pack" {
				fmt.Fprintln(s.Stderr(), "only git-upload-pack is served")
				_ = s.Exit(1)
				return
			}
			repo := filepath.Join(root, filepath.Clean("/"+strings.Trim(args[1], "'\"")))
			cmd := exec.Command("git-upload-pack", repo)
			cmd.Env = Env()
			cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s.Stderr()
			if err := cmd.Run(); err != nil {
				_ = s.Exit(1)
				return
			}
			_ = s.Exit(0)
		},
	}
	srv.AddHostKey(hostSigner)
	srv.AddHostKey(ecSigner)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	s := &SSHServer{Addr: ln.Addr().String(), HostKey: hostSigner.PublicKey(), ECDSAHostKey: ecSigner.PublicKey(), ClientKey: clientKey}
	s.KnownHosts = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(s.KnownHosts, []byte(s.KnownHostsLine(s.HostKey)), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}
