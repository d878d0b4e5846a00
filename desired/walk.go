package desired

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxNodes bounds the YAML nodes one file may expand to (aliases included),
// so a hostile file cannot make validation explode ("billion laughs").
const maxNodes = 200000

// walker decodes a yaml.Node tree by hand. yaml.v3's own decoder stops at
// the first type error and reports neither field paths nor all unknown
// keys; walking the tree lets every error carry file, line and field.
type walker struct {
	file  string
	errs  *Errors
	nodes int
}

func (w *walker) fail(n *yaml.Node, field, format string, args ...any) {
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

// deref follows aliases and charges the node budget.
func (w *walker) deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 64; i++ {
		n = n.Alias
	}
	w.nodes++
	return n
}

func (w *walker) overBudget(n *yaml.Node, field string) bool {
	if w.nodes > maxNodes {
		if w.nodes < maxNodes+2 { // report once
			w.nodes = maxNodes + 2
			w.fail(n, field, "document expands to more than %d nodes (too much aliasing)", maxNodes)
		}
		return true
	}
	return false
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
		k, v := w.deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
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
	var out []pair
	for _, s := range srcs {
		ps, _ := w.pairs(s, field)
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
