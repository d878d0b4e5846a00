package sync

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
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
// the worker; the reason goes to the master. Err classifies it
// (errors.Is): ErrUnverified, ErrRollback, ErrIncompleteHistory or
// ErrNotInHistory.
type RefusedError struct {
	Commit string
	Reason string
	Err    error
	retry  bool // not remembered: the same commit may pass on a later pass
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refusing commit %s: %s", shortHash(e.Commit), e.Reason)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Classes of refusal (RefusedError.Err).
var (
	// ErrUnverified: a new commit is unsigned, or not signed by a trusted
	// key that is valid for it.
	ErrUnverified = errors.New("commit signature not verified")
	// ErrRollback: the commit does not descend from the last applied one.
	ErrRollback = errors.New("commit does not descend from the last applied one")
	// ErrIncompleteHistory: the set of new commits could not be
	// established within Options.MaxHistory commits of history, so
	// neither ancestry nor every new commit's signature could be proven.
	ErrIncompleteHistory = errors.New("history too long to establish the new commits")
	// ErrNotInHistory: the pinned commit is not in the ref's history.
	ErrNotInHistory = errors.New("pinned commit not in the ref's history")
)

// VerifiedNone is Snapshot.Verified when no trust roots are configured:
// nothing was verified.
const VerifiedNone = "none"

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

// trustFingerprint names a trust configuration by the content of its
// files, so that a change of roots (a key added, removed, its validity
// edited, or trust turned on) is noticed across restarts.
func trustFingerprint(opt TrustOptions) (string, error) {
	if opt.GPGKeyRing == "" && opt.SSHAllowedSigners == "" {
		return VerifiedNone, nil
	}
	h := sha256.New()
	for _, f := range []struct{ kind, path string }{{"openpgp", opt.GPGKeyRing}, {"ssh", opt.SSHAllowedSigners}} {
		fmt.Fprintf(h, "%s\x00", f.kind)
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return "", fmt.Errorf("trust roots: %w", err)
		}
		fmt.Fprintf(h, "%d\x00", len(b))
		h.Write(b)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// allowedSigner is one line of an allowed_signers file, as ssh-keygen(1)
// reads it (ALLOWED SIGNERS): principals, options, key.
type allowedSigner struct {
	principals  string
	key         ssh.PublicKey
	validAfter  time.Time // zero: no lower bound
	validBefore time.Time // zero: no upper bound
	line        int
}

// validAt reports why the key may not sign at t, or "" when it may. The
// bounds are inclusive, as in OpenSSH's sshsig.c (a time after
// valid-before is expired, one before valid-after is not yet valid).
func (a allowedSigner) validAt(t time.Time) string {
	switch {
	case !a.validAfter.IsZero() && t.Before(a.validAfter):
		return fmt.Sprintf("not yet valid at %s (valid-after %s)", t.UTC().Format(time.RFC3339), a.validAfter.UTC().Format(time.RFC3339))
	case !a.validBefore.IsZero() && t.After(a.validBefore):
		return fmt.Sprintf("expired at %s (valid-before %s)", t.UTC().Format(time.RFC3339), a.validBefore.UTC().Format(time.RFC3339))
	}
	return ""
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
		if _, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(b)); err != nil {
			return nil, fmt.Errorf("trust keyring %s: %w", opt.GPGKeyRing, err)
		}
		v.keyring = string(b)
	}
	if opt.SSHAllowedSigners != "" {
		b, err := os.ReadFile(opt.SSHAllowedSigners)
		if err != nil {
			return nil, fmt.Errorf("allowed signers: %w", err)
		}
		signers, err := parseAllowedSigners(opt.SSHAllowedSigners, b)
		if err != nil {
			return nil, err
		}
		v.signers = signers
	}
	return v, nil
}

// parseAllowedSigners reads git's allowed_signers format (ssh-keygen(1),
// ALLOWED SIGNERS): "principals [options] keytype base64-key [comment]".
// Options are comma-separated; values are double-quoted and may hold
// commas and spaces (namespaces="file,git"). Only entries valid for the
// "git" namespace are kept; certificate authorities are refused (not
// supported), and so is any option this parser does not know, so a trust
// file never means more, or less, than it says.
func parseAllowedSigners(path string, data []byte) ([]allowedSigner, error) {
	var out []allowedSigner
	sc := bufio.NewScanner(bytes.NewReader(data))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		principals, rest := cutField(line)
		principals = strings.Trim(principals, `"`)
		if principals == "" || rest == "" {
			return nil, fmt.Errorf("%s:%d: want \"principals [options] keytype key\"", path, n)
		}
		key, _, opts, _, err := ssh.ParseAuthorizedKey([]byte(rest))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: no valid public key after the principals: %v", path, n, err)
		}
		a := allowedSigner{principals: principals, key: key, line: n}
		forGit := true
		seen := map[string]bool{}
		for _, o := range opts {
			name, val, quoted, err := parseSignerOption(o)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: option %q: %v", path, n, o, err)
			}
			if seen[name] {
				return nil, fmt.Errorf("%s:%d: option %s given twice", path, n, name)
			}
			seen[name] = true
			switch name {
			case "namespaces", "valid-after", "valid-before":
				if !quoted {
					return nil, fmt.Errorf("%s:%d: option %s needs a double-quoted value (%s=\"...\")", path, n, name, name)
				}
			}
			switch name {
			case "cert-authority":
				return nil, fmt.Errorf("%s:%d: cert-authority entries are not supported", path, n)
			case "namespaces":
				forGit = matchPatternList("git", val)
			case "valid-after":
				if a.validAfter, err = parseSSHTime(val); err != nil {
					return nil, fmt.Errorf("%s:%d: valid-after: %v", path, n, err)
				}
			case "valid-before":
				if a.validBefore, err = parseSSHTime(val); err != nil {
					return nil, fmt.Errorf("%s:%d: valid-before: %v", path, n, err)
				}
			default:
				return nil, fmt.Errorf("%s:%d: unsupported option %q (known: cert-authority, namespaces, valid-after, valid-before)", path, n, name)
			}
		}
		if !a.validAfter.IsZero() && !a.validBefore.IsZero() && !a.validBefore.After(a.validAfter) {
			return nil, fmt.Errorf("%s:%d: valid-before is not after valid-after", path, n)
		}
		if forGit {
			out = append(out, a)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no signer for the git namespace", path)
	}
	return out, nil
}

// parseSignerOption splits one option of an allowed_signers line: a bare
// flag (cert-authority) or name="value" with \" escapes, as OpenSSH's
// opt_dequote reads it. Names are case-insensitive.
func parseSignerOption(o string) (name, val string, quoted bool, err error) {
	name, raw, hasVal := strings.Cut(o, "=")
	name = strings.ToLower(name)
	if !hasVal {
		return name, "", false, nil
	}
	if !strings.HasPrefix(raw, `"`) {
		return name, raw, false, nil
	}
	var b strings.Builder
	for i := 1; i < len(raw); i++ {
		switch c := raw[i]; {
		case c == '\\' && i+1 < len(raw) && raw[i+1] == '"':
			b.WriteByte('"')
			i++
		case c == '"':
			if i != len(raw)-1 {
				return "", "", false, errors.New("text after the closing quote")
			}
			return name, b.String(), true, nil
		default:
			b.WriteByte(c)
		}
	}
	return "", "", false, errors.New("missing closing quote")
}

// parseSSHTime reads an OpenSSH absolute time: YYYYMMDD, YYYYMMDDHHMM or
// YYYYMMDDHHMMSS, in local time, or in UTC with a trailing "Z"
// (misc.c parse_absolute_time).
func parseSSHTime(s string) (time.Time, error) {
	loc := time.Local
	digits := s
	if strings.HasSuffix(s, "Z") || strings.HasSuffix(s, "z") {
		loc, digits = time.UTC, s[:len(s)-1]
	}
	layout := map[int]string{8: "20060102", 12: "200601021504", 14: "20060102150405"}[len(digits)]
	if layout == "" || strings.Trim(digits, "0123456789") != "" {
		return time.Time{}, fmt.Errorf("%q is not YYYYMMDD[HHMM[SS]][Z]", s)
	}
	t, err := time.ParseInLocation(layout, digits, loc)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: %v", s, err)
	}
	return t, nil
}

// matchPatternList reports whether s matches a comma-separated list of
// patterns with * and ? wildcards, where a pattern starting with "!"
// excludes (OpenSSH match_pattern_list).
func matchPatternList(s, list string) bool {
	matched := false
	for _, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		neg := strings.HasPrefix(p, "!")
		if neg {
			p = p[1:]
		}
		if matchPattern(s, p) {
			if neg {
				return false
			}
			matched = true
		}
	}
	return matched
}

func matchPattern(s, p string) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			for i := len(s); i >= 0; i-- {
				if matchPattern(s[i:], p[1:]) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
		default:
			if s == "" || s[0] != p[0] {
				return false
			}
		}
		s, p = s[1:], p[1:]
	}
	return s == ""
}

// cutField splits off the first whitespace-separated field, honouring
// double quotes (principals may be quoted).
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

// verify returns who signed c, or why the signature is not acceptable.
// The signer is named as a metric label may carry it: "ssh:<principals>
// <key fingerprint>" or "openpgp:<primary user id> <key id>".
func (v *verifier) verify(c *object.Commit) (string, error) {
	sig := strings.TrimSpace(c.PGPSignature)
	switch {
	case sig == "":
		return "", errors.New("it is not signed")
	case strings.HasPrefix(sig, "-----BEGIN PGP SIGNATURE-----"):
		if v.keyring == "" {
			return "", errors.New("it has an OpenPGP signature but no OpenPGP keyring is trusted")
		}
		// go-git checks expiry and revocation of the key at the time
		// of verification (now), as gpg reports EXPKEYSIG/REVKEYSIG.
		e, err := c.Verify(v.keyring)
		if err != nil {
			return "", fmt.Errorf("its OpenPGP signature is not by a trusted, valid key: %v", err)
		}
		id := ""
		if pi := e.PrimaryIdentity(); pi != nil {
			id = pi.Name + " "
		}
		return fmt.Sprintf("openpgp:%s%s", id, e.PrimaryKey.KeyIdString()), nil
	case strings.HasPrefix(sig, "-----BEGIN SSH SIGNATURE-----"):
		if len(v.signers) == 0 {
			return "", errors.New("it has an SSH signature but no SSH allowed signers are trusted")
		}
		return v.verifySSH(c)
	}
	return "", errors.New("its signature is of an unsupported kind")
}

// verifySSH checks an SSH signature against the allowed signers. A key's
// valid-after/valid-before window is evaluated at the commit's committer
// time, as git does (git passes -Overify-time=<committer time> to
// ssh-keygen -Y verify since 2.36).
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
	fp := ssh.FingerprintSHA256(s.PublicKey)
	var invalid []string
	for _, a := range v.signers {
		if !bytes.Equal(a.key.Marshal(), s.PublicKey.Marshal()) {
			continue
		}
		if why := a.validAt(c.Committer.When); why != "" {
			invalid = append(invalid, fmt.Sprintf("line %d %s", a.line, why))
			continue
		}
		r, err := payload.Reader()
		if err != nil {
			return "", err
		}
		if err := sshsig.Verify(r, s, a.key, s.HashAlgorithm, "git"); err != nil {
			return "", fmt.Errorf("its SSH signature does not verify: %v", err)
		}
		return "ssh:" + a.principals + " " + fp, nil
	}
	if len(invalid) > 0 {
		return "", fmt.Errorf("its SSH signature is by %s, whose allowed signers entry is not valid at the commit's committer time (%s)", fp, strings.Join(invalid, "; "))
	}
	return "", fmt.Errorf("its SSH signature is by %s, which is not an allowed signer", fp)
}
