package sync

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

// TrustOptions name the trust roots commits must be signed against. With
// neither set, signatures are not checked.
type TrustOptions struct {
	// GPGKeyRing is an armored OpenPGP keyring file (gpg --export --armor).
	GPGKeyRing string
	// SSHAllowedSigners is an allowed_signers file in git's format
	// (gpg.ssh.allowedSignersFile): "principals [options] keytype key".
	SSHAllowedSigners string
}

// RefusedError is a commit the agent will not apply. Nothing is changed on
// the worker; the reason goes to the master.
type RefusedError struct {
	Commit string
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refusing commit %s: %s", shortHash(e.Commit), e.Reason)
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// verifier checks commit signatures against the configured trust roots.
type verifier struct {
	keyring string // armored
	signers []allowedSigner
}

type allowedSigner struct {
	principals string
	key        ssh.PublicKey
	line       int
}

func loadVerifier(opt TrustOptions) (*verifier, error) {
	if opt.GPGKeyRing == "" && opt.SSHAllowedSigners == "" {
		return nil, nil
	}
	v := &verifier{}
	if opt.GPGKeyRing != "" {
		b, err := os.ReadFile(opt.GPGKeyRing)
		if err != nil {
			return nil, fmt.Errorf("trust keyring: %w", err)
		}
		if !bytes.Contains(b, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----")) {
			return nil, fmt.Errorf("trust keyring %s is not an armored OpenPGP public keyring (gpg --export --armor)", opt.GPGKeyRing)
		}
		v.keyring = string(b)
	}
	if opt.SSHAllowedSigners != "" {
		signers, err := parseAllowedSigners(opt.SSHAllowedSigners)
		if err != nil {
			return nil, err
		}
		v.signers = signers
	}
	return v, nil
}

// parseAllowedSigners reads git's allowed_signers format. Only entries
// valid for the "git" namespace are kept; certificate authorities are
// refused (not supported), so a trust file never means more than it says.
func parseAllowedSigners(path string) ([]allowedSigner, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("allowed signers: %w", err)
	}
	defer f.Close()
	var out []allowedSigner
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		principals, rest := cutField(line)
		opts := ""
		if !looksLikeKeyType(firstField(rest)) {
			opts, rest = cutField(rest)
		}
		if strings.Contains(opts, "cert-authority") {
			return nil, fmt.Errorf("%s:%d: cert-authority entries are not supported", path, n)
		}
		if ns := optionValue(opts, "namespaces"); ns != "" && !containsNamespace(ns, "git") {
			continue
		}
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(rest))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, n, err)
		}
		out = append(out, allowedSigner{principals: principals, key: key, line: n})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no signer for the git namespace", path)
	}
	return out, nil
}

func firstField(s string) string {
	f, _ := cutField(s)
	return f
}

// cutField splits off the first whitespace-separated field, honouring
// double quotes (principals and options may be quoted).
func cutField(s string) (string, string) {
	s = strings.TrimSpace(s)
	inQuote := false
	for i, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
		case (r == ' ' || r == '\t') && !inQuote:
			return s[:i], strings.TrimSpace(s[i:])
		}
	}
	return s, ""
}

func looksLikeKeyType(s string) bool {
	return strings.HasPrefix(s, "ssh-") || strings.HasPrefix(s, "ecdsa-") || strings.HasPrefix(s, "sk-")
}

func optionValue(opts, name string) string {
	for _, o := range strings.Split(opts, ",") {
		if k, v, ok := strings.Cut(o, "="); ok && strings.EqualFold(k, name) {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

func containsNamespace(list, ns string) bool {
	for _, n := range strings.Split(list, ",") {
		if strings.TrimSpace(n) == ns {
			return true
		}
	}
	return false
}

// verify returns who signed c, or why the signature is not acceptable.
func (v *verifier) verify(c *object.Commit) (string, error) {
	sig := strings.TrimSpace(c.PGPSignature)
	switch {
	case sig == "":
		return "", errors.New("it is not signed")
	case strings.HasPrefix(sig, "-----BEGIN PGP SIGNATURE-----"):
		if v.keyring == "" {
			return "", errors.New("it has an OpenPGP signature but no OpenPGP keyring is trusted")
		}
		e, err := c.Verify(v.keyring)
		if err != nil {
			return "", fmt.Errorf("its OpenPGP signature is not by a trusted key: %v", err)
		}
		for name := range e.Identities {
			return "openpgp:" + name, nil
		}
		return fmt.Sprintf("openpgp:%X", e.PrimaryKey.KeyId), nil
	case strings.HasPrefix(sig, "-----BEGIN SSH SIGNATURE-----"):
		if len(v.signers) == 0 {
			return "", errors.New("it has an SSH signature but no SSH allowed signers are trusted")
		}
		return v.verifySSH(c)
	}
	return "", errors.New("its signature is of an unsupported kind")
}

func (v *verifier) verifySSH(c *object.Commit) (string, error) {
	s, err := sshsig.Unarmor([]byte(c.PGPSignature))
	if err != nil {
		return "", fmt.Errorf("its SSH signature cannot be read: %v", err)
	}
	if s.Namespace != "git" {
		return "", fmt.Errorf("its SSH signature is for namespace %q, not git", s.Namespace)
	}
	var payload plumbing.MemoryObject
	if err := c.EncodeWithoutSignature(&payload); err != nil {
		return "", err
	}
	for _, a := range v.signers {
		if !bytes.Equal(a.key.Marshal(), s.PublicKey.Marshal()) {
			continue
		}
		r, err := payload.Reader()
		if err != nil {
			return "", err
		}
		if err := sshsig.Verify(r, s, a.key, s.HashAlgorithm, "git"); err != nil {
			return "", fmt.Errorf("its SSH signature does not verify: %v", err)
		}
		return "ssh:" + a.principals, nil
	}
	return "", fmt.Errorf("its SSH signature is by %s, which is not an allowed signer", ssh.FingerprintSHA256(s.PublicKey))
}
