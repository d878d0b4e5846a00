package cliconf

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every flag's environment variable.
const EnvPrefix = "PULL_AGENT_"

// UsageError is a bad command line, environment value or config file.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usage(format string, args ...any) error { return &UsageError{fmt.Sprintf(format, args...)} }

// EnvName is the environment variable of a flag.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// File is a parsed config file: key -> value node (with its line).
type File struct {
	Path string
	keys map[string]*yaml.Node
}

// Load reads a config file. A missing file is an error; the caller
// decides whether a default path is optional.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usage("config file: %v", err)
	}
	f := &File{Path: path, keys: map[string]*yaml.Node{}}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return f, nil // an empty file sets nothing
		}
		return nil, usage("%s: %v", path, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		return nil, usage("%s:%d: the config file must be a mapping of flag names to values", path, root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if _, dup := f.keys[k.Value]; dup {
			return nil, usage("%s:%d: key %q appears twice", path, k.Line, k.Value)
		}
		if v.Kind != yaml.ScalarNode && v.Kind != yaml.SequenceNode {
			return nil, usage("%s:%d: %s: want a value or a list", path, v.Line, k.Value)
		}
		f.keys[k.Value] = v
	}
	return f, nil
}

// Flags is a FlagSet whose defaults come from the config file and the
// environment.
type Flags struct {
	FS     *flag.FlagSet
	file   *File
	source map[string]string // flag -> default, env, file (flag set later)
	errs   []string
}

// New returns an empty set of a command that reads a config file; file
// may be nil (none found).
func New(name, usageLine string, out io.Writer, file *File) *Flags {
	return newFlags(name, usageLine, out, file, " and the config file's key of the same name")
}

// Env returns an empty set of a command that reads no config file: flag >
// environment > default.
func Env(name, usageLine string, out io.Writer) *Flags {
	return newFlags(name, usageLine, out, nil, "")
}

// FlagSetObserver is an output writer that wants each flag set made with
// it: internal/completion runs a command with -h and such a writer, and so
// learns the flags the command really has.
type FlagSetObserver interface {
	io.Writer
	ObserveFlagSet(*flag.FlagSet)
}

func newFlags(name, usageLine string, out io.Writer, file *File, fileHelp string) *Flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: pull-agent %s\n\nFlags (each also read from the environment variable shown%s):\n", usageLine, fileHelp)
		fs.PrintDefaults()
	}
	if o, ok := out.(FlagSetObserver); ok {
		o.ObserveFlagSet(fs)
	}
	return &Flags{FS: fs, file: file, source: map[string]string{}}
}

// lookup returns the layered default's text for name, and where it came
// from: env, else the file, else "".
func (f *Flags) lookup(name string) (string, string) {
	if v, ok := os.LookupEnv(EnvName(name)); ok {
		return v, "env " + EnvName(name)
	}
	if f.file == nil {
		return "", ""
	}
	n, ok := f.file.keys[name]
	if !ok {
		return "", ""
	}
	where := fmt.Sprintf("%s:%d", f.file.Path, n.Line)
	if n.Kind == yaml.SequenceNode {
		var list []string
		for _, c := range n.Content {
			list = append(list, c.Value)
		}
		return strings.Join(list, ","), where
	}
	return n.Value, where
}

func (f *Flags) register(name string, set func(string) error) {
	f.source[name] = "default"
	if v, src := f.lookup(name); src != "" {
		if err := set(v); err != nil {
			f.errs = append(f.errs, fmt.Sprintf("%s: %s=%q: %v", src, name, v, err))
		}
		f.source[name] = src
	}
}

func (f *Flags) help(name, usageText string) string {
	return fmt.Sprintf("%s (env %s)", usageText, EnvName(name))
}

// String registers a string flag.
func (f *Flags) String(p *string, name, def, usageText string) {
	*p = def
	f.register(name, func(v string) error { *p = v; return nil })
	f.FS.StringVar(p, name, *p, f.help(name, usageText))
}

// Bool registers a boolean flag.
func (f *Flags) Bool(p *bool, name string, def bool, usageText string) {
	*p = def
	f.register(name, func(v string) (err error) { *p, err = strconv.ParseBool(v); return })
	f.FS.BoolVar(p, name, *p, f.help(name, usageText))
}

// Int registers an integer flag.
func (f *Flags) Int(p *int, name string, def int, usageText string) {
	*p = def
	f.register(name, func(v string) (err error) { *p, err = strconv.Atoi(v); return })
	f.FS.IntVar(p, name, *p, f.help(name, usageText))
}

// Duration registers a duration flag.
func (f *Flags) Duration(p *time.Duration, name string, def time.Duration, usageText string) {
	*p = def
	f.register(name, func(v string) (err error) { *p, err = time.ParseDuration(v); return })
	f.FS.DurationVar(p, name, *p, f.help(name, usageText))
}

// List registers a repeatable flag whose values may also be
// comma-separated; the environment variable is comma-separated, the file
// takes a YAML list or a comma-separated string. Values on the command
// line replace the layered default.
func (f *Flags) List(p *[]string, name, usageText string) {
	l := &listValue{p: p}
	f.register(name, func(v string) error { *p = nil; _ = l.Set(v); l.layered = true; return nil })
	f.FS.Var(l, name, f.help(name, usageText+"; repeat or separate with commas"))
}

type listValue struct {
	p       *[]string
	layered bool
}

func (l *listValue) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l *listValue) Set(v string) error {
	if l.layered { // the command line replaces the environment's or file's list
		*l.p, l.layered = nil, false
	}
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l.p = append(*l.p, s)
		}
	}
	return nil
}

// Parse parses args; every problem is a *UsageError, -h is flag.ErrHelp.
// Keys of the config file that no flag of the set knows are errors,
// unless known lists them (keys of the same file meant for another
// command).
func (f *Flags) Parse(args []string, known ...string) error {
	if err := f.FS.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usage("%s: %v", f.FS.Name(), err)
	}
	f.FS.Visit(func(fl *flag.Flag) { f.source[fl.Name] = "flag" })
	if f.file != nil {
		for _, k := range slices.Sorted(maps.Keys(f.file.keys)) {
			if f.FS.Lookup(k) == nil && !slices.Contains(known, k) {
				f.errs = append(f.errs, fmt.Sprintf("%s:%d: unknown key %q (keys are flag names)", f.file.Path, f.file.keys[k].Line, k))
			}
		}
	}
	if len(f.errs) > 0 {
		return usage("%s", strings.Join(f.errs, "; "))
	}
	return nil
}

// ParseInterleaved parses args in which flags may also follow or sit
// between positional arguments (`token add worker-a --db m.db`,
// `validate DIR --host h`), and returns the positional ones in order.
func (f *Flags) ParseInterleaved(args []string, known ...string) (positional []string, err error) {
	for {
		if err := f.Parse(args, known...); err != nil {
			return nil, err
		}
		args = f.FS.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// Source says where a flag's value came from: flag, env NAME, FILE:LINE
// or default.
func (f *Flags) Source(name string) string { return f.source[name] }

// Show writes the effective configuration as a config file (YAML, one key
// per flag, sorted), each line commented with its source. redact is
// applied to every value (credentials in URLs). skip names flags that are
// not configuration (config itself, json).
func (f *Flags) Show(w io.Writer, redact func(string) string, skip ...string) error {
	var b strings.Builder
	f.FS.VisitAll(func(fl *flag.Flag) {
		if slices.Contains(skip, fl.Name) {
			return
		}
		v := scalar(redact(fl.Value.String()), false)
		if l, ok := fl.Value.(*listValue); ok {
			var items []string
			if l.p != nil {
				for _, s := range *l.p {
					items = append(items, scalar(redact(s), true))
				}
			}
			v = "[" + strings.Join(items, ", ") + "]"
		}
		fmt.Fprintf(&b, "%s: %s  # %s\n", fl.Name, v, f.source[fl.Name])
	})
	_, err := io.WriteString(w, b.String())
	return err
}

// scalar writes v as a YAML scalar: plain when it reads back as the same
// string, quoted otherwise.
func scalar(v string, flow bool) string {
	special := v == "" || strings.TrimSpace(v) != v || strings.ContainsAny(v[:1], "!&*?|>'\"%@`#-{[]},") ||
		strings.Contains(v, ": ") || strings.Contains(v, " #") || strings.HasSuffix(v, ":") ||
		(flow && strings.ContainsAny(v, ",[]{}"))
	if special {
		return strconv.Quote(v)
	}
	return v
}
