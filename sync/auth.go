package sync

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Credentials say how to authenticate to remotes. Secrets come from files
// or, for tokens and passwords, from the values the caller read from the
// environment: never from the command line, and they are never logged.
type Credentials struct {
	// HTTPS
	Username string // default "git"; GitLab wants "oauth2" for OAuth tokens
	Password string // or token; sent as HTTP basic auth
	// SSH
	SSHKeyFile        string // private key file (ssh:// and user@host:path remotes)
	SSHPassphrase     string
	SSHKnownHostsFile string // required for SSH: unknown or changed host keys are errors
}

// secrets returns the values that must be scrubbed from any text.
func (c Credentials) secrets() []string {
	return []string{c.Password, c.SSHPassphrase}
}

// isSSH reports whether a remote is reached over SSH.
func isSSH(remote string) bool {
	if strings.HasPrefix(remote, "ssh://") || strings.HasPrefix(remote, "git+ssh://") {
		return true
	}
	// scp-style user@host:path (no scheme, a colon before any slash)
	if strings.Contains(remote, "://") || strings.HasPrefix(remote, "/") || strings.HasPrefix(remote, ".") {
		return false
	}
	colon := strings.Index(remote, ":")
	slash := strings.Index(remote, "/")
	return colon > 0 && (slash < 0 || colon < slash)
}

func isHTTP(remote string) bool {
	return strings.HasPrefix(remote, "https://") || strings.HasPrefix(remote, "http://")
}

// authFor builds the auth method for one remote.
func (c Credentials) authFor(remote string) (transport.AuthMethod, error) {
	switch {
	case isSSH(remote):
		if c.SSHKeyFile == "" {
			return nil, fmt.Errorf("remote %s needs an SSH key (--repo-ssh-key)", Redact(remote))
		}
		if c.SSHKnownHostsFile == "" {
			return nil, fmt.Errorf("remote %s needs a known_hosts file (--repo-known-hosts): host keys are never trusted on first use", Redact(remote))
		}
		user := "git"
		if ep, err := transport.NewEndpoint(remote); err == nil && ep.User != "" {
			user = ep.User
		}
		keys, err := gitssh.NewPublicKeysFromFile(user, c.SSHKeyFile, c.SSHPassphrase)
		if err != nil {
			return nil, fmt.Errorf("SSH key %s: %s", c.SSHKeyFile, RedactText(err.Error(), c.secrets()...))
		}
		cb, err := strictHostKeys(c.SSHKnownHostsFile)
		if err != nil {
			return nil, err
		}
		keys.HostKeyCallback = cb
		return keys, nil
	case isHTTP(remote) && c.Password != "":
		user := c.Username
		if user == "" {
			user = "git"
		}
		if u, err := url.Parse(remote); err == nil && u.User != nil {
			return nil, fmt.Errorf("remote %s carries credentials in its URL and a password/token is configured too; keep secrets out of URLs", Redact(remote))
		}
		return &githttp.BasicAuth{Username: user, Password: c.Password}, nil
	}
	return nil, nil
}

// strictHostKeys checks host keys against the operator's known_hosts file:
// an unknown host or a changed key is an error, never learnt.
func strictHostKeys(file string) (ssh.HostKeyCallback, error) {
	if _, err := os.Stat(file); err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	cb, err := knownhosts.New(file)
	if err != nil {
		return nil, fmt.Errorf("known_hosts %s: %w", file, err)
	}
	return func(host string, remote net.Addr, key ssh.PublicKey) error {
		err := cb(host, remote, key)
		var ke *knownhosts.KeyError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &ke) && len(ke.Want) == 0:
			return fmt.Errorf("SSH host %s is not in %s (key %s); add it after checking it out of band", host, file, ssh.FingerprintSHA256(key))
		case errors.As(err, &ke):
			return fmt.Errorf("SSH host key of %s CHANGED (now %s); it does not match %s: refusing", host, ssh.FingerprintSHA256(key), file)
		}
		return err
	}, nil
}
