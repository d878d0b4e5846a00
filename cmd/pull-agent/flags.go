package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// flags wraps a FlagSet so that every flag has an environment variable
// (PULL_AGENT_<NAME>) as its default, named in --help.
type flags struct {
	fs   *flag.FlagSet
	errs []string
}

func newFlags(name, usage string, out io.Writer) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: pull-agent %s\n\nFlags (each also read from the environment variable shown):\n", usage)
		fs.PrintDefaults()
	}
	return &flags{fs: fs}
}

func envName(flagName string) string {
	return "PULL_AGENT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (f *flags) env(name string) (string, bool) {
	return os.LookupEnv(envName(name))
}

func (f *flags) help(name, usage string) string {
	return fmt.Sprintf("%s (env %s)", usage, envName(name))
}

func (f *flags) String(p *string, name, def, usage string) {
	if v, ok := f.env(name); ok {
		def = v
	}
	f.fs.StringVar(p, name, def, f.help(name, usage))
}

func (f *flags) Bool(p *bool, name string, def bool, usage string) {
	if v, ok := f.env(name); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Sprintf("%s=%q is not a boolean", envName(name), v))
		}
		def = b
	}
	f.fs.BoolVar(p, name, def, f.help(name, usage))
}

func (f *flags) Int(p *int, name string, def int, usage string) {
	if v, ok := f.env(name); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Sprintf("%s=%q is not an integer", envName(name), v))
		}
		def = n
	}
	f.fs.IntVar(p, name, def, f.help(name, usage))
}

func (f *flags) Duration(p *time.Duration, name string, def time.Duration, usage string) {
	if v, ok := f.env(name); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Sprintf("%s=%q is not a duration", envName(name), v))
		}
		def = d
	}
	f.fs.DurationVar(p, name, def, f.help(name, usage))
}

// List registers a repeatable flag whose values may also be
// comma-separated; the environment variable is comma-separated.
func (f *flags) List(p *[]string, name, usage string) {
	l := &listValue{p: p}
	if v, ok := f.env(name); ok {
		_ = l.Set(v)
		l.fromEnv = true
	}
	f.fs.Var(l, name, f.help(name, usage+"; repeat or separate with commas"))
}

type listValue struct {
	p       *[]string
	fromEnv bool
}

func (l *listValue) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l *listValue) Set(v string) error {
	if l.fromEnv { // flags on the command line replace the environment's list
		*l.p, l.fromEnv = nil, false
	}
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l.p = append(*l.p, s)
		}
	}
	return nil
}

// Parse parses args and reports bad environment values too. Every
// problem (unknown flag, bad value) is a usage error; -h is flag.ErrHelp.
func (f *flags) Parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageErr("%s: %v", f.fs.Name(), err)
	}
	if len(f.errs) > 0 {
		return usageErr("%s", strings.Join(f.errs, "; "))
	}
	return nil
}
