package sync

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
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

// InsecureRemoteError is a plain http:// remote combined with a token or
// password (or user-info in the URL): the secret would cross the network
// in clear text. New refuses it.
type InsecureRemoteError struct {
	Remote string // redacted
}

func (e *InsecureRemoteError) Error() string {
	return fmt.Sprintf("remote %s: refusing to send credentials in clear text over http://; use https://", e.Remote)
}

// CredentialsInURLError is a remote URL holding a password or token in
// its user-info ("https://user:secret@host/..."). A URL is a command-line
// argument, which any local user can read, and ends up in process lists
// and shell histories; New refuses it rather than use it. The secret
// belongs in Credentials.Password (a file or the environment).
type CredentialsInURLError struct {
	Remote string // redacted
}

func (e *CredentialsInURLError) Error() string {
	return fmt.Sprintf("remote %s carries a password or token in its URL: secrets are never taken from the command line; give it as the repository token (file or environment) instead", e.Remote)
}

// checkRemote refuses remotes that would expose a secret.
func (c Credentials) checkRemote(remote string) error {
	if loc := schemeRE.FindStringIndex(remote); loc != nil && loc[0] == 0 {
		rest := remote[loc[1]:]
		if at := userinfoEnd(rest); at >= 0 {
			ui := rest[:at]
			// A password, or anything url.Parse would not read as a
			// user name alone (which a "/" in a password makes it).
			if strings.ContainsAny(ui, ":/") {
				return &CredentialsInURLError{Remote: Redact(remote)}
			}
			if strings.HasPrefix(strings.ToLower(remote), "http://") {
				return &InsecureRemoteError{Remote: Redact(remote)} // a lone user name may be a token
			}
		}
	}
	if strings.HasPrefix(strings.ToLower(remote), "http://") && c.Password != "" {
		return &InsecureRemoteError{Remote: Redact(remote)}
	}
	return nil
}

// authFor builds the auth method for one remote.
func (c Credentials) authFor(remote string) (transport.AuthMethod, error) {
	if err := c.checkRemote(remote); err != nil {
		return nil, err
	}
	switch {
	case isSSH(remote):
		if c.SSHKeyFile == "" {
			return nil, fmt.Errorf("remote %s needs an SSH key (--repo-ssh-key)", Redact(remote))
		}
		if c.SSHKnownHostsFile == "" {
			return nil, fmt.Errorf("remote %s needs a known_hosts file (--repo-known-hosts): host keys are never trusted on first use", Redact(remote))
		}
		ep, err := transport.NewEndpoint(remote)
		if err != nil {
			return nil, fmt.Errorf("remote %s: %s", Redact(remote), RedactText(err.Error(), c.secrets()...))
		}
		user := "git"
		if ep.User != "" {
			user = ep.User
		}
		keys, err := gitssh.NewPublicKeysFromFile(user, c.SSHKeyFile, c.SSHPassphrase)
		if err != nil {
			return nil, fmt.Errorf("SSH key %s: %s", c.SSHKeyFile, RedactText(err.Error(), c.secrets()...))
		}
		cb, raw, err := strictHostKeys(c.SSHKnownHostsFile)
		if err != nil {
			return nil, err
		}
		keys.HostKeyCallback = cb
		// Offer the server only the host key algorithms known_hosts holds
		// for it, as OpenSSH does: otherwise the client's preference
		// (ECDSA first) picks a key the file does not list, and a
		// genuine server looks like a changed one.
		port := ep.Port
		if port == 0 {
			port = 22
		}
		keys.HostKeyAlgorithms = knownHostAlgorithms(raw, net.JoinHostPort(ep.Host, strconv.Itoa(port)))
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

// knownHostAlgorithms lists the host key algorithms for which known_hosts
// holds a key for hostport. x/crypto's knownhosts has no lookup, but its
// callback, given a key it does not hold, answers with every key it holds
// for the host (KeyError.Want): the known trick, as skeema/knownhosts and
// go-git's own default use it. Nil (the library default) when none is
// known: the callback then refuses the unknown host with a clear message.
func knownHostAlgorithms(cb ssh.HostKeyCallback, hostport string) []string {
	probe, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		return nil
	}
	err = cb(hostport, &net.TCPAddr{IP: net.IPv4zero}, probe)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	add := func(a ...string) {
		for _, x := range a {
			if !seen[x] {
				seen[x] = true
				algos = append(algos, x)
			}
		}
	}
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			// An RSA key signs with SHA-2 (and SHA-1 where allowed).
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			add(t)
		}
	}
	return algos
}

// strictHostKeys checks host keys against the operator's known_hosts file:
// an unknown host or a changed key is an error, never learnt. It returns
// the checking callback and the library's own (whose errors are typed).
func strictHostKeys(file string) (ssh.HostKeyCallback, ssh.HostKeyCallback, error) {
	if _, err := os.Stat(file); err != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", err)
	}
	cb, err := knownhosts.New(file)
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts %s: %w", file, err)
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
			return fmt.Errorf("SSH host key of %s CHANGED (now %s %s); it does not match %s: refusing", host, key.Type(), ssh.FingerprintSHA256(key), file)
		}
		return err
	}, cb, nil
}
