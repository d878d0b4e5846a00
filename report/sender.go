package report

import (
	"bytes"
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
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// HeartbeatPath is DECNET's heartbeat endpoint, which also takes
// lifecycle deltas.
const HeartbeatPath = "/swarm/heartbeat"

// SenderOptions configure delivery. Zero fields take the defaults.
type SenderOptions struct {
	Master         string        // base URL of the master, e.g. https://master:8770
	RequestTimeout time.Duration // one HTTP request; default 10s
	RetryMax       int           // retries per flush before giving up until the next one; default 5
	RetryWaitMin   time.Duration // first backoff; default 500ms
	RetryWaitMax   time.Duration // backoff cap; default 30s
	BatchSize      int           // events per request; default 100

	CAFile        string // PEM roots for an https master (default: system roots)
	CertFile      string // client certificate for mTLS
	KeyFile       string
	PinSHA256     string // hex SHA-256 of the master's leaf certificate (DER)
	TokenFile     string // bearer token, read per request, never logged
	AllowInsecure bool   // permit a plain-http master (loopback demos and tests)
}

// Sender posts the outbox to the master.
type Sender struct {
	opt    SenderOptions
	box    *Outbox
	log    *slog.Logger
	client *retryablehttp.Client
	url    string
}

// ErrRejected marks a batch the master refused with a 4xx other than
// 408/429: resending the same bytes cannot succeed.
var ErrRejected = errors.New("master rejected the report")

// NewSender returns a Sender for box.
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
	if opt.BatchSize == 0 {
		opt.BatchSize = 100
	}
	base := strings.TrimRight(opt.Master, "/")
	if strings.HasPrefix(base, "http://") && !opt.AllowInsecure {
		return nil, fmt.Errorf("master URL %s is plain HTTP; use https, or --master-insecure for a loopback demo", base)
	}
	tlsCfg, err := tlsConfig(opt)
	if err != nil {
		return nil, err
	}
	log = log.With("component", "report")
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{
		Timeout:   opt.RequestTimeout,
		Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment, MaxIdleConns: 4, IdleConnTimeout: time.Minute},
	}
	c.RetryMax = opt.RetryMax
	c.RetryWaitMin = opt.RetryWaitMin
	c.RetryWaitMax = opt.RetryWaitMax
	c.Backoff = Backoff
	c.CheckRetry = checkRetry
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	c.Logger = nil
	c.RequestLogHook = func(_ retryablehttp.Logger, r *http.Request, attempt int) {
		if attempt > 0 {
			log.Debug("retrying report", "attempt", attempt, "url", r.URL.Redacted())
		}
	}
	return &Sender{opt: opt, box: box, log: log, client: c, url: base + HeartbeatPath}, nil
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

// checkRetry retries connection errors, 5xx, 408 and 429; never other 4xx,
// and never a certificate the agent does not trust: retrying cannot fix it.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err != nil {
		var cv *tls.CertificateVerificationError
		var ua x509.UnknownAuthorityError
		var he x509.HostnameError
		if errors.Is(err, errPin) || errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) {
			return false, err
		}
		return true, nil
	}
	switch {
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests:
		return true, nil
	case resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
		return true, nil
	}
	return false, nil
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

// Flush sends pending events in order, in batches, each with the
// heartbeat hb; with no events pending it sends the heartbeat alone. It
// stops at the first batch that cannot be delivered (the events stay
// queued) and returns how many events were acknowledged.
func (s *Sender) Flush(ctx context.Context, hb Heartbeat) (int, error) {
	sent := 0
	for {
		events, err := s.box.Pending(s.opt.BatchSize)
		if err != nil {
			return sent, err
		}
		if len(events) == 0 && sent > 0 {
			return sent, nil
		}
		hb.OutboxDepth = s.box.Depth() - len(events)
		hb.OutboxRejects = s.box.Rejected()
		err = s.post(ctx, Body{Heartbeat: hb, Lifecycle: events})
		switch {
		case errors.Is(err, ErrRejected):
			s.log.ErrorContext(ctx, "master rejected a report batch; set aside", "events", len(events), "first_seq", firstSeq(events), "err", err)
			if rerr := s.box.Reject(events); rerr != nil {
				return sent, rerr
			}
			if len(events) == 0 {
				return sent, err
			}
			continue
		case err != nil:
			return sent, err
		}
		if err := s.box.Ack(events); err != nil {
			return sent, err
		}
		sent += len(events)
		if len(events) == 0 {
			return sent, nil
		}
	}
}

func firstSeq(es []Event) uint64 {
	if len(es) == 0 {
		return 0
	}
	return es[0].Seq
}

func (s *Sender) post(ctx context.Context, body Body) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "pull-agent/"+body.AgentVersion)
	if s.opt.TokenFile != "" {
		tok, err := os.ReadFile(s.opt.TokenFile)
		if err != nil {
			return fmt.Errorf("master token file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("report to %s: %w", s.opt.Master, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusRequestTimeout && resp.StatusCode != http.StatusTooManyRequests:
		return fmt.Errorf("%w: %s: %s", ErrRejected, resp.Status, strings.TrimSpace(string(msg)))
	default:
		return fmt.Errorf("report to %s: %s: %s", s.opt.Master, resp.Status, strings.TrimSpace(string(msg)))
	}
}
