package desired

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in the fleet repository. Its text is
// "file:line: field: problem", the form editors and CI annotators parse.
type Error struct {
	File  string // path inside the repository, slash-separated
	Line  int    // 1-based; 0 when the problem concerns the file as a whole
	Field string // dotted path of the offending field, e.g. deckies[2].ip
	Msg   string
}

func (e Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one load, sorted by file and line.
// Load returns it (as error) instead of stopping at the first problem so an
// operator can fix a whole commit in one round.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func (es Errors) sorted() Errors {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].File != es[j].File {
			return es[i].File < es[j].File
		}
		return es[i].Line < es[j].Line
	})
	return es
}

// Pos locates a value in the repository so that later stages (relocalize,
// apply) can report problems with the same file:line precision.
type Pos struct {
	File string
	Line int
}

func (p Pos) String() string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d", p.File, p.Line)
}

// Errorf returns an Error located at p.
func (p Pos) Errorf(field, format string, args ...any) Error {
	return Error{File: p.File, Line: p.Line, Field: field, Msg: fmt.Sprintf(format, args...)}
}
