package sync_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/internal/gittest"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// gitVerifies asks git itself whether it accepts the commit against the
// allowed signers file.
func gitVerifies(t *testing.T, work, allowed, commit string) bool {
	t.Helper()
	cmd := exec.Command("git", "-c", "gpg.ssh.allowedSignersFile="+allowed, "verify-commit", commit)
	cmd.Dir = work
	cmd.Env = gittest.Env()
	return cmd.Run() == nil
}

// allowed_signers options as ssh-keygen and git read them: quoted lists,
// validity windows evaluated at the commit's committer time. Each case is
// checked against `git verify-commit` too, so "as git does" is tested, not
// assumed.
func TestAllowedSignersOptions(t *testing.T) {
	const past = "GIT_COMMITTER_DATE=2019-06-01T12:00:00Z"
	tests := []struct {
		name    string
		options string
		env     []string
		refusal string // "" = accepted
	}{
		{"quoted namespace list", `namespaces="file,git"`, nil, ""},
		{"wildcard namespace", `namespaces="g*"`, nil, ""},
		{"no options", ``, nil, ""},
		{"option names are case-insensitive", `NAMESPACES="git",Valid-Before="21000101000000Z"`, nil, ""},
		{"expired key", `valid-before="20200101"`, nil, "expired at"},
		{"expired key, commit made while valid", `valid-before="20200101"`, []string{past}, ""},
		{"not yet valid", `valid-after="20990101Z"`, nil, "not yet valid"},
		{"inside the window", `valid-after="20200101",valid-before="20990101",namespaces="file,git"`, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			repo, _ := initRepo(t)
			repo.Signer = gittest.NewSSHSignerOptions(t, "ops", tt.options)
			repo.Env = tt.env
			repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
			head := repo.Commit("signed")
			s, err := fleetsync.New(fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: t.TempDir(),
				Trust: fleetsync.TrustOptions{SSHAllowedSigners: repo.Signer.Trust}}, quietLog())
			if err != nil {
				t.Fatalf("allowed signers with %s refused at start: %v", tt.options, err)
			}
			snap, err := s.Sync(context.Background(), "")
			if tt.refusal == "" {
				if err != nil || snap.Commit != head || !strings.HasPrefix(snap.Verified, "ssh:ops@example.org SHA256:") {
					t.Fatalf("want %s accepted, got %v", head, err)
				}
			} else {
				if !errors.Is(err, fleetsync.ErrUnverified) {
					t.Fatalf("want a refusal, got %v", err)
				}
				refused(t, err, tt.refusal)
			}
			if git := gitVerifies(t, repo.Work, repo.Signer.Trust, head); git != (tt.refusal == "") {
				t.Errorf("git verify-commit accepts=%v, the agent accepts=%v", git, tt.refusal == "")
			}
		})
	}
}

// A bad allowed_signers file stops the start with its file:line.
func TestAllowedSignersErrors(t *testing.T) {
	signer := gittest.NewSSHSigner(t, "ops")
	tests := []struct {
		name, line, want string
	}{
		{"only other namespaces", `ops namespaces="file,ssh" KEY`, "lists no signer for the git namespace"},
		{"git excluded", `ops namespaces="*,!git" KEY`, "lists no signer for the git namespace"},
		{"cert authority", `ops cert-authority KEY`, ":2: cert-authority entries are not supported"},
		{"unquoted value", `ops namespaces=git KEY`, ":2: option namespaces needs a double-quoted value"},
		{"unterminated quote", `ops namespaces="git KEY`, ":2: no valid public key"},
		{"bad time", `ops valid-before="2020-01-01" KEY`, `:2: valid-before: "2020-01-01" is not YYYYMMDD[HHMM[SS]][Z]`},
		{"empty window", `ops valid-after="20300101",valid-before="20200101" KEY`, ":2: valid-before is not after valid-after"},
		{"unknown option", `ops restrict KEY`, `:2: unsupported option "restrict"`},
		{"twice", `ops namespaces="git",namespaces="file" KEY`, ":2: option namespaces given twice"},
		{"no key", `ops namespaces="git"`, ":2: no valid public key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "allowed_signers")
			body := "# operators\n" + strings.Replace(tt.line, "KEY", signer.PublicKey, 1) + "\n"
			if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := fleetsync.New(fleetsync.Options{Remotes: []string{"/nonexistent"}, Dir: t.TempDir(),
				Trust: fleetsync.TrustOptions{SSHAllowedSigners: file}}, quietLog())
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), file) {
				t.Fatalf("want an error naming %s and %q, got %v", file, tt.want, err)
			}
		})
	}
}

// Secrets never cross the network in clear text and never sit in a URL.
func TestRemoteCredentialChecks(t *testing.T) {
	const secret = "s3cr3t/t%zzoken"
	tests := []struct {
		name     string
		remote   string
		password string
		insecure bool // *InsecureRemoteError, else *CredentialsInURLError; or ok
		ok       bool
	}{
		{"http with a token", "http://git.example.org/fleet.git", "tok-" + secret, true, false},
		{"http with a user name in the URL", "http://ghp_tokenlike@git.example.org/fleet.git", "", true, false},
		{"https with a token", "https://git.example.org/fleet.git", "tok-" + secret, false, true},
		{"http without credentials", "http://git.example.org/fleet.git", "", false, true},
		{"password in an https URL", "https://user:" + secret + "@git.example.org/fleet.git", "", false, false},
		{"password in an http URL", "http://user:pw-" + secret + "@git.example.org/fleet.git", "", false, false},
		{"password in an ssh URL", "ssh://git:pw-" + secret + "@git.example.org/fleet.git", "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := fleetsync.New(fleetsync.Options{Remotes: []string{tt.remote}, Dir: t.TempDir(),
				Credentials: fleetsync.Credentials{Password: tt.password, SSHKeyFile: "/nonexistent", SSHKnownHostsFile: "/nonexistent"}}, quietLog())
			var ie *fleetsync.InsecureRemoteError
			var ue *fleetsync.CredentialsInURLError
			switch {
			case tt.ok:
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			case tt.insecure:
				if !errors.As(err, &ie) || ie.Remote != fleetsync.Redact(tt.remote) || !strings.Contains(err.Error(), "refusing to send credentials in clear text over http://") {
					t.Fatalf("want an InsecureRemoteError for %s, got %v", fleetsync.Redact(tt.remote), err)
				}
			default:
				if !errors.As(err, &ue) || !strings.Contains(ue.Remote, "***@git.example.org") {
					t.Fatalf("want a CredentialsInURLError, got %v", err)
				}
			}
			if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "ghp_tokenlike") {
				t.Fatalf("the secret is in the error: %v", err)
			}
		})
	}
}
