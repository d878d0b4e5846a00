package cliconf

import (
	"io"
	"log/slog"
	"strings"
)

// LogOptions are the logging flags every command shares (the agent's and
// the master's).
type LogOptions struct{ Level, Format string }

// Bind registers --log-level and --log-format.
func (o *LogOptions) Bind(f *Flags) {
	f.String(&o.Level, "log-level", "info", "log level: debug, info, warn or error")
	f.String(&o.Format, "log-format", "text", "log format: text or json")
}

// Logger returns the logger the flags ask for, writing to w; a bad level
// or format is a *UsageError.
func (o *LogOptions) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.Level)); err != nil {
		return nil, usage("--log-level %q: %v", o.Level, err)
	}
	hopt := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(o.Format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopt)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopt)), nil
	}
	return nil, usage("--log-format %q: want text or json", o.Format)
}
