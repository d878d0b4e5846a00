package agent

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"strings"
)

// maxTriggerBody bounds a webhook body: a push event is a few KiB.
const maxTriggerBody = 1 << 20

// TriggerHandler is the local webhook that starts a pass: a POST whose
// body is signed with HMAC-SHA256 under secret, in GitHub's and Gitea's
// header (X-Hub-Signature-256: sha256=<hex>) or Gitea's own
// (X-Gitea-Signature: <hex>). A missing or bad signature gets 401 and
// starts nothing. A good one asks for a pass without waiting: triggers
// has room for one, and a trigger arriving while one is pending is
// absorbed, so any burst during a pass gives at most one more pass. Every
// request is counted in m (nil: not counted) by its outcome, so an
// operator sees refused signatures (someone probing, or a rotated secret)
// without reading logs.
func TriggerHandler(secret []byte, triggers chan<- struct{}, m *Metrics, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			m.webhookRequest("bad_request")
			http.Error(w, "POST a signed body", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTriggerBody))
		if err != nil {
			m.webhookRequest("bad_request")
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		sig := strings.TrimPrefix(r.Header.Get("X-Hub-Signature-256"), "sha256=")
		if sig == "" {
			sig = r.Header.Get("X-Gitea-Signature")
		}
		got, err := hex.DecodeString(sig)
		mac := hmac.New(sha256.New, secret)
		mac.Write(body)
		if err != nil || len(secret) == 0 || !hmac.Equal(got, mac.Sum(nil)) {
			m.webhookRequest("refused")
			log.Warn("webhook trigger refused: bad or missing signature", "remote", r.RemoteAddr)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		select {
		case triggers <- struct{}{}:
			m.webhookRequest("accepted")
		default: // a pass is already due: bursts coalesce
			m.webhookRequest("coalesced")
		}
		w.WriteHeader(http.StatusAccepted)
	})
}
