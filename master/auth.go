package master

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
)

// authError is a refusal: 401 (no or bad credential) or 403 (a good
// credential that does not allow this).
type authError struct {
	code int
	msg  string
}

func (e *authError) Error() string { return e.msg }

// credential is what a request proved about its sender.
type credential struct {
	certNames []string   // verified client certificate: CN, then DNS SANs
	token     *TokenInfo // a valid bearer token
}

func (c credential) certFor(host string) bool { return slices.Contains(c.certNames, host) }

// identity is what the hosts table records as the reporter's identity.
func (c credential) identity() string {
	switch {
	case len(c.certNames) > 0:
		return c.certNames[0]
	case c.token != nil:
		return "token " + c.token.ID
	}
	return ""
}

// authenticate reads the request's credentials. A bearer token that is
// present but not valid is a 401 even when a certificate is also given:
// a client that sends a revoked token should hear about it.
func (s *Server) authenticate(r *http.Request) (credential, error) {
	var c credential
	// Only a chain verified against --client-ca counts; a certificate
	// merely presented is nothing.
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.PeerCertificates) > 0 {
		leaf := r.TLS.PeerCertificates[0]
		if leaf.Subject.CommonName != "" {
			c.certNames = append(c.certNames, leaf.Subject.CommonName)
		}
		c.certNames = append(c.certNames, leaf.DNSNames...)
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return c, nil
	}
	scheme, tok, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return c, &authError{http.StatusUnauthorized, "the Authorization header must be \"Bearer <token>\""}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	t, err := s.store.VerifyToken(ctx, strings.TrimSpace(tok))
	if errors.Is(err, ErrBadToken) {
		return c, &authError{http.StatusUnauthorized, "invalid or revoked token"}
	}
	if err != nil {
		s.log.Error("failed to verify a token", "err", err)
		return c, &authError{http.StatusServiceUnavailable, "failed to verify the token; try again"}
	}
	c.token = &t
	return c, nil
}

// refuse answers an authError (or a lookup failure) with its JSON body
// and logs it without any credential.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, err error) {
	var ae *authError
	if !errors.As(err, &ae) {
		ae = &authError{http.StatusUnauthorized, err.Error()}
	}
	s.log.Warn("request refused", "code", ae.code, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", ae.msg)
	errorf(w, ae.code, "%s", ae.msg)
}

// reader wraps a read endpoint: it needs an operator token or a verified
// client certificate, unless the reader is on loopback and the master
// trusts that (Options.LoopbackReaders), or auth is off.
func (s *Server) reader(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// Every read has its own deadline: a page is a few bounded
		// queries, never a scan that could run for minutes.
		ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		if s.opt.InsecureNoAuth {
			h(w, r)
			return
		}
		c, err := s.authenticate(r)
		switch {
		case err != nil:
			s.refuse(w, r, err)
		case c.token != nil && c.token.Kind != OperatorToken:
			s.refuse(w, r, &authError{http.StatusForbidden, "an agent token can only report; reading needs an operator token"})
		case c.token != nil || len(c.certNames) > 0:
			h(w, r)
		case s.opt.LoopbackReaders && isLoopback(r.RemoteAddr):
			h(w, r)
		default:
			s.refuse(w, r, &authError{http.StatusUnauthorized, "authentication required: Authorization: Bearer <operator token>, or a client certificate"})
		}
	}
}

const readTimeout = 15 * time.Second

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
