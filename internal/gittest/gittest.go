// Package gittest makes real git repositories and serves them on loopback
// (file://, git daemon, git http-backend over HTTP or HTTPS) for tests.
// It drives the git command line, which is what operators push with.
package gittest

import (
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Env is the environment every git command here runs with: no user or
// system configuration, fixed identity.
func Env() []string {
	return append(os.Environ(),
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Fleet Operator", "GIT_AUTHOR_EMAIL=ops@example.org",
		"GIT_COMMITTER_NAME=Fleet Operator", "GIT_COMMITTER_EMAIL=ops@example.org",
	)
}

// Git runs git in dir and returns its trimmed output.
func Git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	return GitEnv(t, dir, nil, args...)
}

// GitEnv is Git with extra environment variables.
func GitEnv(t testing.TB, dir string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(Env(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Repo is a working copy with a bare "origin" beside it.
type Repo struct {
	Work string // working tree
	Bare string // bare repository operators push to; serve this
	// Signer, when set, signs every commit made with Commit and Merge.
	Signer *Signer
	// Env is extra environment for Commit and Merge, such as
	// GIT_COMMITTER_DATE for a commit made at a given time.
	Env []string
	t   testing.TB
}

// New creates an empty repository on branch main and its bare origin,
// under root/<name>.git.
func New(t testing.TB, root, name string) *Repo {
	t.Helper()
	r := &Repo{Work: filepath.Join(root, name+"-work"), Bare: filepath.Join(root, name+".git"), t: t}
	Git(t, root, "init", "-q", "--bare", "-b", "main", r.Bare)
	Git(t, root, "init", "-q", "-b", "main", r.Work)
	Git(t, r.Work, "remote", "add", "origin", r.Bare)
	return r
}

// Write writes files (path -> content) into the working tree; an empty
// content deletes the file.
func (r *Repo) Write(files map[string]string) {
	r.t.Helper()
	for p, c := range files {
		full := filepath.Join(r.Work, p)
		if c == "" {
			_ = os.RemoveAll(full)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
}

// Commit commits everything and pushes the current branch to the bare
// origin (forced); it returns the new commit hash. Extra args go to git
// commit (e.g. -S).
func (r *Repo) Commit(msg string, args ...string) string {
	r.t.Helper()
	Git(r.t, r.Work, "add", "-A")
	cfg, env := r.signing()
	if r.Signer != nil {
		args = append(args, "-S")
	}
	GitEnv(r.t, r.Work, env, append(append(cfg, "commit", "-q", "--allow-empty", "-m", msg), args...)...)
	return r.push()
}

func (r *Repo) signing() (cfg, env []string) {
	env = append(env, r.Env...)
	if r.Signer != nil {
		cfg, env = r.Signer.config, append(env, r.Signer.env...)
	}
	return cfg, env
}

func (r *Repo) push() string {
	r.t.Helper()
	branch := Git(r.t, r.Work, "symbolic-ref", "--short", "HEAD")
	Git(r.t, r.Work, "push", "-q", "-f", "origin", "HEAD:"+branch)
	return Git(r.t, r.Work, "rev-parse", "HEAD")
}

// Branch creates branch name at rev and switches the working copy to it.
func (r *Repo) Branch(name, rev string) {
	r.t.Helper()
	Git(r.t, r.Work, "checkout", "-q", "-b", name, rev)
}

// Checkout switches the working copy to an existing branch.
func (r *Repo) Checkout(name string) {
	r.t.Helper()
	Git(r.t, r.Work, "checkout", "-q", name)
}

// Merge merges branch into the current branch with a merge commit (signed
// when Signer is set) and pushes; it returns the merge commit's hash.
func (r *Repo) Merge(branch, msg string) string {
	r.t.Helper()
	cfg, env := r.signing()
	args := []string{"merge", "-q", "--no-ff", "-m", msg}
	if r.Signer != nil {
		args = append(args, "-S")
	}
	GitEnv(r.t, r.Work, env, append(append(cfg, args...), branch)...)
	return r.push()
}

// Reset moves the working copy's branch back (for force-push tests).
func (r *Repo) Reset(rev string) {
	r.t.Helper()
	Git(r.t, r.Work, "reset", "-q", "--hard", rev)
}

// Signer signs commits with gpg or ssh-keygen in a temporary home.
type Signer struct {
	// Trust is the file the agent trusts: an armored OpenPGP keyring or an
	// allowed_signers file.
	Trust string
	// PublicKey is an SSH signer's public key line ("ssh-ed25519 AAAA… name").
	PublicKey string
	config    []string
	env       []string
}

// NewGPGSigner makes an OpenPGP key in a temporary GNUPGHOME.
func NewGPGSigner(t testing.TB, name string) *Signer {
	t.Helper()
	home := t.TempDir()
	gpg := func(args ...string) string {
		cmd := exec.Command("gpg", append([]string{"--batch", "--homedir", home, "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	email := name + "@example.org"
	gpg("--quick-gen-key", name+" <"+email+">", "ed25519", "sign", "never")
	trust := filepath.Join(t.TempDir(), name+".asc")
	if err := os.WriteFile(trust, []byte(gpg("--armor", "--export", email)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run() })
	return &Signer{Trust: trust, config: []string{"-c", "gpg.format=openpgp", "-c", "user.signingkey=" + email}, env: []string{"GNUPGHOME=" + home}}
}

// NewSSHSigner makes an ed25519 key and an allowed_signers file for it.
func NewSSHSigner(t testing.TB, name string) *Signer {
	t.Helper()
	return NewSSHSignerOptions(t, name, `namespaces="git"`)
}

// NewSSHSignerOptions is NewSSHSigner with the allowed_signers options
// field given verbatim ("" for none), e.g. `namespaces="file,git",valid-before="20200101"`.
func NewSSHSignerOptions(t testing.TB, name, options string) *Signer {
	t.Helper()
	dir := t.TempDir()
	key := filepath.Join(dir, name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	trust := filepath.Join(dir, "allowed_signers")
	if options != "" {
		options += " "
	}
	line := name + "@example.org " + options + strings.TrimSpace(string(pub)) + "\n"
	if err := os.WriteFile(trust, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	return &Signer{Trust: trust, PublicKey: strings.TrimSpace(string(pub)), config: []string{"-c", "gpg.format=ssh", "-c", "user.signingkey=" + key + ".pub"}}
}

// FileURL is the file:// URL of the bare origin.
func (r *Repo) FileURL() string { return "file://" + r.Bare }

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Daemon serves every repository under root with `git daemon` on loopback
// and returns the git:// base URL (append "/<name>.git").
func Daemon(t testing.TB, root string) string {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command("git", "daemon", "--reuseaddr", "--export-all", "--base-path="+root,
		"--listen=127.0.0.1", fmt.Sprintf("--port=%d", port), root)
	cmd.Env = Env()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("git daemon did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "git://" + addr
}

// HTTPHandler is git's smart HTTP server (git http-backend through CGI)
// for every repository under root.
func HTTPHandler(root string) http.Handler {
	gitBin, _ := exec.LookPath("git")
	return &cgi.Handler{
		Path: gitBin,
		Args: []string{"http-backend"},
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1"},
	}
}

// HTTP serves root over plain HTTP on loopback; it returns the base URL.
func HTTP(t testing.TB, root string, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = HTTPHandler(root)
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// HTTPS serves root over HTTPS on loopback; it returns the base URL and
// the PEM of the server's self-signed CA, which clients must be given.
func HTTPS(t testing.TB, root string, wrap func(http.Handler) http.Handler) (string, []byte) {
	t.Helper()
	var h http.Handler = HTTPHandler(root)
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return srv.URL, ca
}
