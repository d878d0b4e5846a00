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
	if err != nil || u.Scheme == "" || u.Host == "" {
		return remote
	}
	if u.User != nil {
		u.User = url.User("***")
	}
	return u.String()
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
