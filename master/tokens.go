package master

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Token kinds: an agent token lets one host report (as itself only); an
// operator token lets a person or a tool read the API and the page.
const (
	AgentToken    = "agent"
	OperatorToken = "operator"
)

// A token is "pam1_<id>_<secret>": id (12 hex digits) names the row, the
// secret is 32 random bytes. Only SHA-256 of the whole token is stored, so
// a copy of the database does not let anyone report or read.
const tokenPrefix = "pam1_"

// ErrBadToken marks a token that is malformed, unknown or revoked. The
// three are not told apart to the client.
var ErrBadToken = errors.New("invalid or revoked token")

// TokenInfo describes a stored token (never its secret).
type TokenInfo struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	Name      string `json:"name"` // the host of an agent token; the operator's name
	CreatedAt string `json:"created_at"`
	RevokedAt string `json:"revoked_at,omitempty"`
}

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// AddToken creates a token of kind for name and returns it: the only time
// the secret exists outside the holder's hands.
func (s *Store) AddToken(ctx context.Context, kind, name string, now time.Time) (string, TokenInfo, error) {
	if kind != AgentToken && kind != OperatorToken {
		return "", TokenInfo{}, fmt.Errorf("token kind %q is not %s or %s", kind, AgentToken, OperatorToken)
	}
	if !nameRE().MatchString(name) {
		return "", TokenInfo{}, fmt.Errorf("name %q: want a host name (lower-case letters, digits and '-', at most 63)", name)
	}
	var idb [6]byte
	var secret [32]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return "", TokenInfo{}, err
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return "", TokenInfo{}, err
	}
	id := hex.EncodeToString(idb[:])
	tok := tokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(secret[:])
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.w.ExecContext(ctx, s.q(`INSERT INTO tokens(id, kind, name, hash, created_ns) VALUES(?,?,?,?,?)`),
		id, kind, name, hashToken(tok), now.UnixNano()); err != nil {
		return "", TokenInfo{}, fmt.Errorf("failed to store the token: %w", err)
	}
	return tok, TokenInfo{ID: id, Kind: kind, Name: name, CreatedAt: fromNS(now.UnixNano())}, nil
}

// Tokens lists every token, revoked ones too, by kind and name.
func (s *Store) Tokens(ctx context.Context) ([]TokenInfo, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id, kind, name, created_ns, revoked_ns FROM tokens ORDER BY kind, name, created_ns`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []TokenInfo
	for rows.Next() {
		var t TokenInfo
		var created, revoked int64
		if err := rows.Scan(&t.ID, &t.Kind, &t.Name, &created, &revoked); err != nil {
			return nil, err
		}
		t.CreatedAt, t.RevokedAt = fromNS(created), fromNS(revoked)
		out = append(out, t)
	}
	return out, rows.Err()
}

// ActiveTokens counts tokens not revoked, of kind (any kind when empty).
func (s *Store) ActiveTokens(ctx context.Context, kind string) (int, error) {
	var n int
	err := s.a.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM tokens WHERE revoked_ns = 0 AND (kind = ? OR ? = '')`), kind, kind).Scan(&n)
	return n, err
}

// RevokeTokens revokes every active token of kind for name, or, when id is
// set, that one token. It returns how many it revoked.
func (s *Store) RevokeTokens(ctx context.Context, kind, name, id string, now time.Time) (int, error) {
	var res sql.Result
	var err error
	if id != "" {
		res, err = s.w.ExecContext(ctx, s.q(`UPDATE tokens SET revoked_ns = ? WHERE id = ? AND revoked_ns = 0`), now.UnixNano(), id)
	} else {
		res, err = s.w.ExecContext(ctx, s.q(`UPDATE tokens SET revoked_ns = ? WHERE kind = ? AND name = ? AND revoked_ns = 0`), now.UnixNano(), kind, name)
	}
	if err != nil {
		return 0, fmt.Errorf("failed to revoke: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// VerifyToken returns the active token tok names, or ErrBadToken. The
// stored hash is compared in constant time.
func (s *Store) VerifyToken(ctx context.Context, tok string) (TokenInfo, error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok || len(tok) > 128 {
		return TokenInfo{}, ErrBadToken
	}
	id, _, ok := strings.Cut(rest, "_")
	if !ok || len(id) != 12 {
		return TokenInfo{}, ErrBadToken
	}
	var t TokenInfo
	var hash string
	var created, revoked int64
	err := s.a.QueryRowContext(ctx, s.q(`SELECT id, kind, name, hash, created_ns, revoked_ns FROM tokens WHERE id = ?`), id).
		Scan(&t.ID, &t.Kind, &t.Name, &hash, &created, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return TokenInfo{}, ErrBadToken
	}
	if err != nil {
		return TokenInfo{}, fmt.Errorf("failed to look up a token: %w", err)
	}
	if subtle.ConstantTimeCompare([]byte(hashToken(tok)), []byte(hash)) != 1 || revoked != 0 {
		return TokenInfo{}, ErrBadToken
	}
	t.CreatedAt = fromNS(created)
	return t, nil
}
