package desired

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// The alias budget. yaml.v3 keeps aliases as pointers, so a few bytes can
// stand for an exponential tree once aliases and merge keys (<<) are
// followed ("billion laughs"). Every node the walker visits costs one unit
// from a budget shared by the whole repository, granted per byte read. A
// plain host file visits about 0.1 node per byte (0.5 at most, written
// densely in flow style), so one per byte only bites on amplification, and
// the cost of any Load stays within a small factor of a plain file of the
// same size (BenchmarkLoadHostile).
const (
	// BudgetPerByte is the number of node visits each byte of YAML read
	// adds to the repository's budget.
	BudgetPerByte = 1
	// BudgetBase is the budget every repository starts with, so small
	// repositories may use anchors freely.
	BudgetBase = 100_000
	// MaxMergeDepth bounds merge keys nested in merge keys (and catches a
	// mapping merging itself).
	MaxMergeDepth = 16
	// errorCost is what recording one error takes from the budget.
	errorCost = 16
)

// budget bounds the work of one Load. It is shared by every walker of the
// load; once exhausted it stays exhausted (sticky), and Load then returns
// the single error recorded in hit, never a partial result.
type budget struct {
	left int
	hit  *Error
}

func newBudget() *budget { return &budget{left: BudgetBase} }

// grant adds the allowance for n bytes read.
func (b *budget) grant(n int) { b.left += n * BudgetPerByte }

// exhausted reports whether the load must stop.
func (b *budget) exhausted() bool { return b.hit != nil }

// walker decodes a yaml.Node tree by hand. yaml.v3's own decoder stops at
// the first type error and reports neither field paths nor all unknown
// keys; walking the tree lets every error carry file, line and field.
type walker struct {
	file       string
	errs       *Errors
	budget     *budget
	mergeDepth int
}

func (w *walker) fail(n *yaml.Node, field, format string, args ...any) {
	// Errors cost too: an alias repeating a broken mapping must not fill
	// memory with error texts before the budget stops it.
	w.budget.left -= errorCost
	line := 0
	if n != nil {
		line = n.Line
	}
	*w.errs = append(*w.errs, Error{File: w.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (w *walker) pos(n *yaml.Node) Pos {
	if n == nil {
		return Pos{File: w.file}
	}
	return Pos{File: w.file, Line: n.Line}
}

// deref follows aliases and charges the node budget. It never returns nil
// for a non-nil node, even over budget: callers stop at the next
// overBudget check, and Load then discards everything but the budget error.
func (w *walker) deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && n.Alias != nil && i < 64; i++ {
		n = n.Alias
	}
	w.budget.left--
	return n
}

// overBudget reports whether the repository's budget is spent, recording
// the (single, sticky) error the first time. Compared with <=, not ==, so
// no jump of the counter can step over it.
func (w *walker) overBudget(n *yaml.Node, field string) bool {
	if w.budget.exhausted() {
		return true
	}
	if w.budget.left <= 0 {
		e := w.pos(n).Errorf(field, "aliases and merge keys (<<) expand the repository beyond its budget of %d YAML nodes plus %d per byte; refusing the whole repository", BudgetBase, BudgetPerByte)
		w.budget.hit = &e
		return true
	}
	return false
}

// hostile stops the load with e as its only error, as overBudget does.
func (w *walker) hostile(e Error) {
	if !w.budget.exhausted() {
		w.budget.hit = &e
	}
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func index(parent string, i int) string { return fmt.Sprintf("%s[%d]", parent, i) }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!int":
			return "an integer (" + n.Value + ")"
		case "!!float":
			return "a number (" + n.Value + ")"
		case "!!bool":
			return "a boolean (" + n.Value + ")"
		default:
			return "a string"
		}
	}
	return "an unexpected node"
}

type pair struct {
	key   string
	k, v  *yaml.Node
	field string
}

// pairs returns the entries of a mapping, expanding YAML merge keys (<<)
// with explicit keys taking precedence, and reporting duplicate keys.
func (w *walker) pairs(n *yaml.Node, field string) ([]pair, bool) {
	n = w.deref(n)
	if n == nil || w.overBudget(n, field) {
		return nil, false
	}
	if n.Kind != yaml.MappingNode {
		w.fail(n, field, "expected a mapping, got %s", kindName(n))
		return nil, false
	}
	var out []pair
	seen := map[string]int{}
	var merged []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		if w.overBudget(n.Content[i], field) {
			return nil, false
		}
		k, v := w.deref(n.Content[i]), n.Content[i+1]
		if k == nil || k.Kind != yaml.ScalarNode {
			w.fail(k, field, "mapping keys must be strings")
			continue
		}
		if k.ShortTag() == "!!merge" {
			merged = append(merged, w.mergeSources(v, field)...)
			continue
		}
		if at, dup := seen[k.Value]; dup {
			w.fail(k, join(field, k.Value), "duplicate key (first set on line %d)", at)
			continue
		}
		seen[k.Value] = k.Line
		out = append(out, pair{key: k.Value, k: k, v: v, field: join(field, k.Value)})
	}
	// Merged entries are work beyond the nodes visited: charge them too.
	w.budget.left -= len(merged)
	if w.overBudget(n, field) {
		return nil, false
	}
	for _, p := range merged {
		if _, ok := seen[p.key]; !ok {
			seen[p.key] = p.k.Line
			p.field = join(field, p.key)
			out = append(out, p)
		}
	}
	return out, true
}

func (w *walker) mergeSources(v *yaml.Node, field string) []pair {
	v = w.deref(v)
	if v == nil || w.overBudget(v, field) {
		return nil
	}
	if w.mergeDepth >= MaxMergeDepth {
		// Deeper merges only serve to amplify (or loop: a mapping merging
		// itself); treated like an exhausted budget.
		w.hostile(w.pos(v).Errorf(field, "merge keys (<<) nest more than %d deep or merge a mapping into itself; refusing the whole repository", MaxMergeDepth))
		return nil
	}
	var srcs []*yaml.Node
	switch v.Kind {
	case yaml.MappingNode:
		srcs = []*yaml.Node{v}
	case yaml.SequenceNode:
		srcs = v.Content
	default:
		w.fail(v, field, "a merge key (<<) needs a mapping or a list of mappings")
		return nil
	}
	w.mergeDepth++
	defer func() { w.mergeDepth-- }()
	var out []pair
	for _, s := range srcs {
		ps, ok := w.pairs(s, field)
		if !ok && w.budget.exhausted() {
			return nil
		}
		out = append(out, ps...)
	}
	return out
}

// fields walks a mapping whose keys are fixed: each known key's handler is
// called, unknown keys are errors (strict parsing), and required keys that
// are missing are reported at the mapping's line.
func (w *walker) fields(n *yaml.Node, field string, required []string, known map[string]func(p pair)) bool {
	ps, ok := w.pairs(n, field)
	if !ok {
		return false
	}
	have := map[string]bool{}
	for _, p := range ps {
		if w.budget.exhausted() {
			return false
		}
		have[p.key] = true
		h, ok := known[p.key]
		if !ok {
			w.fail(p.k, p.field, "unknown key%s", suggest(p.key, known))
			continue
		}
		h(p)
	}
	for _, r := range required {
		if !have[r] {
			w.fail(w.deref(n), join(field, r), "required key is missing")
		}
	}
	return true
}

// suggest names the allowed keys, so a typo's error says what was meant.
func suggest(key string, known map[string]func(p pair)) string {
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	sortStrings(names)
	return " (allowed: " + strings.Join(names, ", ") + ")"
}

func (w *walker) scalar(n *yaml.Node, field, want string) *yaml.Node {
	n = w.deref(n)
	if n == nil {
		return nil
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		w.fail(n, field, "expected %s, got %s", want, kindName(n))
		return nil
	}
	return n
}

// str decodes a string. Numbers and booleans are refused rather than
// coerced: `version: 5.7` meant as a string must be quoted, so that what the
// operator wrote is what the decoy gets (DECNET bug: "false" was truthy).
func (w *walker) str(n *yaml.Node, field string) (string, bool) {
	s := w.scalar(n, field, "a string")
	if s == nil {
		return "", false
	}
	if s.ShortTag() != "!!str" {
		w.fail(s, field, "expected a string, got %s; quote it if it is meant as text", kindName(s))
		return "", false
	}
	return s.Value, true
}

func (w *walker) integer(n *yaml.Node, field string) (int64, bool) {
	s := w.scalar(n, field, "an integer")
	if s == nil {
		return 0, false
	}
	if s.ShortTag() != "!!int" {
		w.fail(s, field, "expected an integer, got %s", kindName(s))
		return 0, false
	}
	v, err := strconv.ParseInt(strings.ReplaceAll(s.Value, "_", ""), 0, 64)
	if err != nil {
		w.fail(s, field, "integer %s is out of range", s.Value)
		return 0, false
	}
	return v, true
}

func (w *walker) boolean(n *yaml.Node, field string) (bool, bool) {
	s := w.scalar(n, field, "a boolean")
	if s == nil {
		return false, false
	}
	if s.ShortTag() != "!!bool" {
		w.fail(s, field, "expected true or false, got %s", kindName(s))
		return false, false
	}
	var b bool
	if err := s.Decode(&b); err != nil {
		w.fail(s, field, "expected true or false, got %q", s.Value)
		return false, false
	}
	return b, true
}

// list walks a sequence, calling fn for each item.
func (w *walker) list(n *yaml.Node, field string, fn func(i int, item *yaml.Node, field string)) bool {
	n = w.deref(n)
	if n == nil || w.overBudget(n, field) {
		return false
	}
	if n.Kind != yaml.SequenceNode {
		w.fail(n, field, "expected a list, got %s", kindName(n))
		return false
	}
	for i, item := range n.Content {
		if w.overBudget(item, field) {
			return false
		}
		fn(i, item, index(field, i))
	}
	return true
}

func (w *walker) strList(n *yaml.Node, field string) []string {
	var out []string
	w.list(n, field, func(_ int, item *yaml.Node, f string) {
		if s, ok := w.str(item, f); ok {
			out = append(out, s)
		}
	})
	return out
}

// strMap decodes a mapping of string to string.
func (w *walker) strMap(n *yaml.Node, field string, keyOK func(string) bool, keyWant string) map[string]string {
	ps, ok := w.pairs(n, field)
	if !ok {
		return nil
	}
	out := make(map[string]string, len(ps))
	for _, p := range ps {
		if keyOK != nil && !keyOK(p.key) {
			w.fail(p.k, p.field, "key must be %s", keyWant)
			continue
		}
		if s, ok := w.str(p.v, p.field); ok {
			out[p.key] = s
		}
	}
	return out
}
