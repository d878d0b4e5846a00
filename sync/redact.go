package sync

import (
	"regexp"
	"strings"
)

// schemeRE finds the start of a URL ("scheme://") in free text.
var schemeRE = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://`)

// userinfoEnd returns the index in s (the text right after "scheme://") of
// the "@" that ends the user-info, or -1 when there is none.
//
// It does not parse the URL: a secret need not be valid URL syntax (a
// token with "%zz", a password with "/" are rejected by url.Parse, and
// then the whole URL, secret included, would be kept). The URL is taken
// to run to the first blank or quote, and everything up to its LAST "@"
// is user-info: a host never holds "@", so no part of a secret can
// survive; a path holding "@" is over-redacted, which is harmless.
func userinfoEnd(s string) int {
	end := strings.IndexAny(s, " \t\r\n\"'<>`")
	if end < 0 {
		end = len(s)
	}
	return strings.LastIndex(s[:end], "@")
}

// Redact returns a remote URL fit for logs, errors and reports: user-info
// (tokens, passwords) is replaced by "***". Plain paths and scp-style SSH
// addresses keep their user name, and so do ssh:// URLs with a user name
// alone: an SSH user name (git@) is not a secret.
func Redact(remote string) string {
	loc := schemeRE.FindStringIndex(remote)
	if loc == nil || loc[0] != 0 {
		return remote
	}
	scheme, rest := strings.ToLower(remote[:loc[1]-3]), remote[loc[1]:]
	at := userinfoEnd(rest)
	if at < 0 {
		return remote
	}
	if (scheme == "ssh" || scheme == "git+ssh") && !strings.ContainsAny(rest[:at], ":/") {
		return remote
	}
	// Over HTTP a lone user name may itself be a token (GitHub accepts
	// that), so all user-info goes.
	return remote[:loc[1]] + "***@" + rest[at+1:]
}

// RedactText removes URL user-info from free text such as a library's
// error message, which may quote the URL it was given, and any of the
// given secrets (values shorter than 4 bytes are too likely to occur by
// chance and are left alone).
func RedactText(s string, secrets ...string) string {
	var b strings.Builder
	for {
		loc := schemeRE.FindStringIndex(s)
		if loc == nil {
			b.WriteString(s)
			break
		}
		b.WriteString(s[:loc[1]])
		s = s[loc[1]:]
		if at := userinfoEnd(s); at >= 0 {
			b.WriteString("***@")
			s = s[at+1:]
		}
	}
	out := b.String()
	for _, sec := range secrets {
		if len(sec) >= 4 {
			out = strings.ReplaceAll(out, sec, "***")
		}
	}
	return out
}
