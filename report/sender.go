package report

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	stdsync "sync"
	"time"
	"unicode"

	"github.com/hashicorp/go-retryablehttp"
)

// HeartbeatPath is DECNET's heartbeat endpoint, which also takes
// lifecycle deltas.
const HeartbeatPath = "/swarm/heartbeat"

const (
	// DefaultBatchSize is the number of events per request.
	DefaultBatchSize = 100
	// DefaultMaxBodyBytes is the reference master's body limit; the sender
	// splits a batch whose body would exceed it before posting.
	DefaultMaxBodyBytes = 4 << 20
	// maxAnswerBytes bounds how much of an answer is read (a verdict for
	// a whole batch fits easily).
	maxAnswerBytes = 256 << 10
	// maxAnswerText bounds the part of an answer kept in errors and logs.
	maxAnswerText = 512
)

// SenderOptions configure delivery. Zero fields take the defaults.
type SenderOptions struct {
	Master         string        // base URL of the master, e.g. https://master:8770
	RequestTimeout time.Duration // one HTTP request; default 10s
	// RetryMax is the number of retries per flush after a failed attempt
	// before leaving the events queued for the next flush; default 5,
	// negative for none.
	RetryMax     int
	RetryWaitMin time.Duration // first backoff; default 500ms
	RetryWaitMax time.Duration // backoff cap; default 30s
	BatchSize    int           // events per request; default DefaultBatchSize
	// MaxBodyBytes is the largest body the sender posts when it can help
	// it: a larger batch is split first. Default DefaultMaxBodyBytes.
	MaxBodyBytes int

	CAFile        string // PEM roots for an https master (default: system roots)
	CertFile      string // client certificate for mTLS
	KeyFile       string
	PinSHA256     string // hex SHA-256 of the master's leaf certificate (DER)
	TokenFile     string // bearer token, read per attempt, never logged
	AllowInsecure bool   // permit a plain-http master (loopback demos and tests)
}

// Sender posts the outbox to the master. Flush may be called from several
// goroutines (one runs at a time); Status is safe to call at any moment.
type Sender struct {
	opt SenderOptions
	box *Outbox
	log *slog.Logger
	hc  *http.Client // go-retryablehttp's inner client: TLS, timeout, no redirects
	url string

	// backoff chooses the wait before a retry (Backoff). sleepFor takes
	// that choice and returns how long go-retryablehttp actually sleeps:
	// all of it in production; tests record the choice and sleep none of
	// it, so they assert on the waits the sender chose instead of timing
	// them.
	backoff  func(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration
	sleepFor func(chosen time.Duration) time.Duration
	now      func() time.Time

	flushMu stdsync.Mutex // one Flush at a time keeps the wire in seq order
	mu      stdsync.Mutex // guards st
	st      DeliveryStatus
}

var (
	// ErrAuth marks an answer that refuses the agent's credentials (401,
	// 403, or 407 from a proxy), or credentials the agent cannot read.
	// Events stay queued; retrying after the credentials are fixed
	// delivers them.
	ErrAuth = errors.New("credentials refused or missing")
	// ErrEventTooLarge marks a single event the master refuses as too
	// large (413) even alone. It stays queued and blocks the queue until
	// the master's limit is raised: it is never dropped silently.
	ErrEventTooLarge = errors.New("event too large for the master")
)

// HTTPError is an answer other than 2xx from the master, or from a proxy on
// the way. errors.Is(err, ErrAuth) holds for 401, 403 and 407.
type HTTPError struct {
	StatusCode int
	Status     string // e.g. "401 Unauthorized"
	Body       string // the start of the answer, on one line
}

func (e *HTTPError) Error() string {
	if e.Body == "" {
		return "master answered " + e.Status
	}
	return "master answered " + e.Status + ": " + e.Body
}

// Is makes errors.Is(err, ErrAuth) true for credential refusals.
func (e *HTTPError) Is(target error) bool {
	return target == ErrAuth && isAuthStatus(e.StatusCode)
}

func isAuthStatus(code int) bool {
	return code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusProxyAuthRequired
}

// NewSender returns a Sender for box. It starts from the delivery status
// stored in box, so counters and the last success survive a restart.
func NewSender(box *Outbox, opt SenderOptions, log *slog.Logger) (*Sender, error) {
	if opt.Master == "" {
		return nil, errors.New("no master URL")
	}
	if opt.RequestTimeout == 0 {
		opt.RequestTimeout = 10 * time.Second
	}
	if opt.RetryMax == 0 {
		opt.RetryMax = 5
	}
	if opt.RetryWaitMin == 0 {
		opt.RetryWaitMin = 500 * time.Millisecond
	}
	if opt.RetryWaitMax == 0 {
		opt.RetryWaitMax = 30 * time.Second
	}
	if opt.BatchSize <= 0 {
		opt.BatchSize = DefaultBatchSize
	}
	if opt.MaxBodyBytes <= 0 {
		opt.MaxBodyBytes = DefaultMaxBodyBytes
	}
	base := strings.TrimRight(opt.Master, "/")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("master URL %q is not an http(s) URL with a host", redact(base))
	}
	if u.Scheme == "http" && !opt.AllowInsecure {
		return nil, fmt.Errorf("master URL %s is plain HTTP; use https, or --master-insecure for a loopback demo", u.Redacted())
	}
	tlsCfg, err := tlsConfig(opt)
	if err != nil {
		return nil, err
	}
	s := &Sender{
		opt: opt, box: box, log: log.With("component", "report"), url: base + HeartbeatPath,
		hc: &http.Client{
			Timeout:   opt.RequestTimeout,
			Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment, MaxIdleConns: 4, IdleConnTimeout: time.Minute},
			// A redirect is no delivery: following it would turn the POST
			// into a GET whose 200 would acknowledge events nobody stored,
			// or carry the token to another host.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		backoff: Backoff, sleepFor: func(d time.Duration) time.Duration { return d }, now: time.Now,
	}
	if d, ok := box.Delivery(); ok {
		s.st = d
	}
	return s, nil
}

func redact(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

func tlsConfig(opt SenderOptions) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if opt.CAFile != "" {
		pem, err := os.ReadFile(opt.CAFile)
		if err != nil {
			return nil, fmt.Errorf("master CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("master CA bundle %s holds no PEM certificate", opt.CAFile)
		}
		cfg.RootCAs = pool
	}
	if opt.CertFile != "" || opt.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(opt.CertFile, opt.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if opt.PinSHA256 != "" {
		want := strings.ToLower(strings.ReplaceAll(opt.PinSHA256, ":", ""))
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("master presented no certificate")
			}
			sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if got := hex.EncodeToString(sum[:]); got != want {
				return fmt.Errorf("%w: master certificate SHA-256 %s does not match the pinned %s", errPin, got, want)
			}
			return nil
		}
	}
	return cfg, nil
}

var errPin = errors.New("certificate pin mismatch")

// untrusted says whether a transport error is the agent refusing the
// master's certificate: retrying within a flush cannot fix it.
func untrusted(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	return errors.Is(err, errPin) || errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he)
}

// Backoff is capped exponential backoff with full jitter; a Retry-After
// header on a 429 or 503 answer is honoured exactly, since the master said
// when it wants to hear from us.
func Backoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if d, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			return d
		}
	}
	ceil := lo << min(attempt, 30)
	if ceil > hi || ceil <= 0 {
		ceil = hi
	}
	// Full jitter between lo and the exponential ceiling spreads a fleet's
	// retries after a master outage instead of lining them up.
	return lo + time.Duration(rand.Int64N(int64(ceil-lo)+1))
}

func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := time.Until(t)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// Status returns the sender's delivery status. Safe for concurrent use.
func (s *Sender) Status() DeliveryStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// Flush sends pending events in seq order, in batches, each with the
// heartbeat hb (its text fields capped, Delivery filled in); with no events
// pending it sends the heartbeat alone. It returns how many events the
// master acknowledged. Events leave the outbox only on a 2xx answer, or
// one by one when a per-event verdict (422 with a Refusal body) names
// them. A 413 halves the batch until it fits. Any other failure leaves
// every event queued, in order; Flush retries it with capped exponential
// backoff (at most RetryMax times, never waiting past ctx's deadline), then
// returns the error: the next Flush starts again with the oldest event.
func (s *Sender) Flush(ctx context.Context, hb Heartbeat) (int, error) {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	defer func() {
		// For the status command and the next run; losing it costs only
		// that view.
		if err := s.box.SetDelivery(s.Status()); err != nil {
			s.log.DebugContext(ctx, "cannot store the delivery status", "err", err)
		}
	}()
	hb = hb.Capped()
	limit := s.opt.BatchSize
	sent := 0
	stale := false // events were set aside since the last heartbeat went
	for {
		events, err := s.box.Pending(limit)
		if err != nil {
			return sent, err
		}
		if len(events) == 0 && sent > 0 && !stale {
			return sent, nil // the heartbeat went with the last batch
		}
		for i := range events {
			events[i] = events[i].Capped() // stored by an older version
		}
		hb.OutboxDepth = s.box.Depth() - len(events)
		hb.OutboxRejects = s.box.Rejected()
		st := s.Status()
		hb.Delivery = &st
		data, err := json.Marshal(Body{Heartbeat: hb, Lifecycle: events})
		if err != nil {
			return sent, err
		}
		if len(data) > s.opt.MaxBodyBytes && len(events) > 1 {
			limit = len(events) / 2
			continue
		}
		r := s.post(ctx, data, events, hb.AgentVersion)
		switch r.kind {
		case delivered:
			if err := s.box.Ack(events); err != nil {
				return sent, err
			}
			sent += len(events)
			stale = false
			s.mu.Lock()
			s.st.Delivered += uint64(len(events))
			if s.st.StuckSeq != 0 && len(events) > 0 && events[0].Seq >= s.st.StuckSeq {
				s.st.StuckSeq = 0
			}
			s.mu.Unlock()
			if len(events) == 0 {
				return sent, nil
			}
		case verdict:
			for _, rj := range r.rejected {
				s.log.ErrorContext(ctx, "the master refused one malformed event; set aside in rejected/",
					"seq", rj.event.Seq, "event_id", rj.event.EventID, "decky", rj.event.DeckyName, "field", rj.Field, "reason", rj.Reason)
				reason := rj.Reason
				if rj.Field != "" {
					reason = rj.Field + ": " + reason
				}
				if err := s.box.SetAside(rj.event, fmt.Sprintf("master answered %d: %s", RefusalStatus, reason)); err != nil {
					return sent, err
				}
				s.mu.Lock()
				s.st.SetAside++
				s.mu.Unlock()
			}
			// The rest of the batch goes again, in order, at once; if
			// nothing is left, the heartbeat goes alone with the new count.
			stale = true
		case tooLarge:
			if len(events) > 1 {
				s.log.WarnContext(ctx, "the master refused a batch as too large; splitting it", "events", len(events), "bytes", len(data))
				limit = len(events) / 2
				continue
			}
			if len(events) == 0 {
				return sent, fmt.Errorf("the heartbeat alone (%d bytes) is too large for the master: %w", len(data), r.err)
			}
			e := events[0]
			err := fmt.Errorf("%w: seq %d (decky %s, %d bytes with the heartbeat) stays queued until the master takes it: %w",
				ErrEventTooLarge, e.Seq, e.DeckyName, len(data), r.err)
			s.mu.Lock()
			s.st.StuckSeq, s.st.LastError = e.Seq, err.Error()
			s.mu.Unlock()
			s.log.ErrorContext(ctx, "the master refuses one event as too large even alone; it stays queued", "seq", e.Seq, "event_id", e.EventID, "bytes", len(data))
			return sent, err
		default:
			switch {
			case errors.Is(r.err, ErrAuth):
				s.log.ErrorContext(ctx, "the master refuses the agent's credentials; events stay queued", "pending", s.box.Depth(), "err", r.err)
			case r.status/100 == 4:
				s.log.WarnContext(ctx, "the master answered without a per-event verdict; events stay queued", "pending", s.box.Depth(), "err", r.err)
			}
			return sent, r.err
		}
	}
}

type outcome int

const (
	delivered outcome = iota // 2xx
	retryable                // no verdict: keep everything queued, try again
	stop                     // retrying within this flush cannot help
	tooLarge                 // 413
	verdict                  // per-event Refusal matching the batch
)

type rejection struct {
	RejectedEvent
	event Event
}

type result struct {
	kind     outcome
	status   int // HTTP status, 0 without an answer
	err      error
	rejected []rejection
	resp     *http.Response // status and headers only, for Backoff
}

// exchange is one body on its way through the retry engine: the hooks
// the engine calls after each attempt (CheckRetry), before each wait
// (Backoff) and before each retry (PrepareRetry) share it.
type exchange struct {
	events []Event
	tries  int           // attempts that have ended
	r      result        // outcome of the last attempt
	ended  bool          // r is set
	wait   time.Duration // the wait chosen before the next attempt
}

// post sends one body, retrying what may succeed later. The retry loop,
// the body rewind and the wait are go-retryablehttp's; which answer is
// retried, how long to wait and what each attempt does to the status are
// this package's, through the client's hooks (see engine).
func (s *Sender) post(ctx context.Context, data []byte, events []Event, version string) result {
	// A []byte body is rewound by the engine before every attempt: each
	// retry sends the same bytes, the same event IDs.
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodPost, s.url, data)
	if err != nil {
		return result{kind: stop, err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "pull-agent/"+version)
	x := &exchange{events: events}
	if err := s.authorize(req.Request); err != nil {
		return s.ended(ctx, x, result{kind: stop, err: err})
	}
	resp, err := s.engine(x).Do(req)
	if resp != nil {
		resp.Body.Close() // already read by classify
	}
	if !x.ended {
		// The engine gave up before any attempt ended (it could not
		// rewind the body): nothing was sent.
		return result{kind: stop, err: fmt.Errorf("report to %s: %w", redact(s.opt.Master), err)}
	}
	// A flush cancelled during a wait ends here too (err is the context's):
	// the last answer stands, as it was recorded.
	return x.r
}

// engine returns the go-retryablehttp client for one body. Its hooks carry
// the delivery policy; the client is per body because the hooks keep that
// body's state (a Client is cheap, and the connection pool, in hc, is
// shared).
func (s *Sender) engine(x *exchange) *retryablehttp.Client {
	return &retryablehttp.Client{
		HTTPClient:   s.hc,
		Logger:       nil, // slog below; the library's default logger would print to stderr
		RetryMax:     s.opt.RetryMax,
		RetryWaitMin: s.opt.RetryWaitMin,
		RetryWaitMax: s.opt.RetryWaitMax,
		// After each attempt: classify the answer, record it, and decide.
		CheckRetry: func(ctx context.Context, resp *http.Response, err error) (bool, error) {
			n := x.tries
			x.tries++
			r := s.ended(ctx, x, classify(ctx, resp, err, x.events, s.opt.Master))
			if r.kind != retryable || n >= s.opt.RetryMax {
				return false, nil
			}
			d := s.backoff(s.opt.RetryWaitMin, s.opt.RetryWaitMax, n, r.resp)
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
				// Waiting past the deadline only to give up: leave it to
				// the next flush.
				return false, nil
			}
			x.wait = d
			s.log.DebugContext(ctx, "retrying report", "attempt", x.tries, "after", d, "err", r.err)
			return true, nil
		},
		// The wait CheckRetry chose (and checked against the deadline);
		// the engine sleeps it, and stops early if the flush is cancelled.
		Backoff: func(time.Duration, time.Duration, int, *http.Response) time.Duration {
			return s.sleepFor(x.wait)
		},
		// Before each retry: the token is read again, so a rotated one is
		// used at once.
		PrepareRetry: func(req *http.Request) error {
			if err := s.authorize(req); err != nil {
				s.ended(req.Context(), x, result{kind: stop, err: err})
				return err
			}
			return nil
		},
		// The outcome is in x; the engine's own summary error would only
		// hide the answer's status.
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
	}
}

// ended keeps r as the exchange's last outcome and records it in the
// status, unless the flush was cancelled or ran out of time: that is no
// delivery failure, and the status keeps what the master last said.
func (s *Sender) ended(ctx context.Context, x *exchange, r result) result {
	x.r, x.ended = r, true
	if r.kind == stop && ctx.Err() != nil {
		return r
	}
	s.record(r)
	return r
}

// authorize sets the bearer token, read from its file at every attempt.
func (s *Sender) authorize(req *http.Request) error {
	if s.opt.TokenFile == "" {
		return nil
	}
	tok, err := os.ReadFile(s.opt.TokenFile)
	if err != nil {
		return fmt.Errorf("%w: master token file: %w", ErrAuth, err)
	}
	// A fresh map: the engine's retry is a shallow copy of the request
	// that went before.
	req.Header = req.Header.Clone()
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	return nil
}

// classify judges one attempt from its answer (resp) or transport error.
// It reads and closes the answer's body.
func classify(ctx context.Context, resp *http.Response, err error, events []Event, master string) result {
	if err != nil {
		err = fmt.Errorf("report to %s: %w", redact(master), err)
		if ctx.Err() != nil || untrusted(err) {
			return result{kind: stop, err: err}
		}
		return result{kind: retryable, err: err}
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	resp.Body.Close()
	resp.Body = http.NoBody // for the engine, which drains it before a retry
	r := result{status: resp.StatusCode, resp: &http.Response{StatusCode: resp.StatusCode, Header: resp.Header}}
	herr := &HTTPError{StatusCode: resp.StatusCode, Status: resp.Status, Body: oneLine(answer)}
	switch {
	case resp.StatusCode/100 == 2:
		r.kind = delivered
	case resp.StatusCode == http.StatusRequestEntityTooLarge:
		r.kind, r.err = tooLarge, herr
	case resp.StatusCode == RefusalStatus || resp.StatusCode == http.StatusBadRequest:
		if rj, ok := matchRefusal(answer, events); ok {
			r.kind, r.rejected = verdict, rj
			return r
		}
		r.kind, r.err = retryable, herr
	default:
		// 401, 403, 404, 407, any other 4xx without a verdict, 3xx, 5xx:
		// nothing proves an event is at fault, so every event stays.
		r.kind, r.err = retryable, herr
	}
	return r
}

// matchRefusal decodes a per-event verdict and matches it against the
// events posted. It is a verdict only if it names at least one event and
// every event it names was in the body, by event_id and seq both: anything
// else (an HTML error page, a proxy's JSON, a verdict about another body)
// proves nothing about these events.
func matchRefusal(answer []byte, events []Event) ([]rejection, bool) {
	var ref Refusal
	if err := json.Unmarshal(answer, &ref); err != nil || len(ref.Rejected) == 0 {
		return nil, false
	}
	bySeq := make(map[uint64]Event, len(events))
	for _, e := range events {
		bySeq[e.Seq] = e
	}
	var out []rejection
	seen := map[uint64]bool{}
	for _, rj := range ref.Rejected {
		e, ok := bySeq[rj.Seq]
		if !ok || e.EventID != rj.EventID || rj.EventID == "" {
			return nil, false
		}
		if seen[rj.Seq] {
			continue
		}
		seen[rj.Seq] = true
		rj.Reason = Truncate(oneLine([]byte(rj.Reason)), maxAnswerText)
		rj.Field = Truncate(oneLine([]byte(rj.Field)), 128)
		out = append(out, rejection{RejectedEvent: rj, event: e})
	}
	return out, true
}

// record updates the delivery status after one attempt.
func (s *Sender) record(r result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.st.LastAttempt = now
	s.st.LastHTTPStatus = r.status
	switch r.kind {
	case delivered:
		s.st.LastSuccess = now
		s.st.LastError = ""
		s.st.ConsecutiveFailures = 0
		s.st.AuthFailing = false
	case verdict:
		// The master read the body and judged its events: credentials and
		// path are fine; the set-aside events are logged and counted.
		s.st.LastError = fmt.Sprintf("master refused %d malformed event(s); set aside", len(r.rejected))
		s.st.AuthFailing = false
	default:
		s.st.LastError = r.err.Error()
		s.st.ConsecutiveFailures++
		s.st.AuthFailing = errors.Is(r.err, ErrAuth)
	}
}

// oneLine returns the start of an answer as one printable line, for errors
// and logs.
func oneLine(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(string(b), " "))
	return Truncate(strings.Join(strings.Fields(s), " "), maxAnswerText)
}
