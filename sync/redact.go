package sync

import (
	"net/url"
	"regexp"
	"strings"
)

// Redact returns a remote URL fit for logs, errors and reports: user-info
// (tokens, passwords) is replaced by "***". Plain paths and scp-style SSH
// addresses keep their user name, which is not a secret.
func Redact(remote string) string {
	u, err := url.Parse(remote)
	if err != nil || u.Scheme == "" || u.Host == "" || u.User == nil {
		return remote
	}
	_, hasPassword := u.User.Password()
	if !hasPassword && (u.Scheme == "ssh" || u.Scheme == "git+ssh") {
		return remote // an SSH user name (git@) is not a secret
	}
	// Over HTTP a lone user name may itself be a token (GitHub accepts
	// that), so all user-info goes.
	u.User = nil
	return strings.Replace(u.String(), "://", "://***@", 1)
}

var userinfoRE = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@`)

// RedactText removes URL user-info from free text such as a library's
// error message, which may quote the URL it was given.
func RedactText(s string, secrets ...string) string {
	s = userinfoRE.ReplaceAllString(s, "${1}***@")
	for _, sec := range secrets {
		if len(sec) >= 4 {
			s = strings.ReplaceAll(s, sec, "***")
		}
	}
	return s
}
