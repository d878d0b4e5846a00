package desired

import (
	"bytes"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// maxLocateBytes bounds the YAML one Load re-parses to find the line of
// errors yaml.v3 reports without one, so that a repository of such files
// cannot make validation slow. Past it an error keeps line 0.
const maxLocateBytes = 8 << 20

// readerErrorRE matches yaml.v3's reader errors about UTF-8 input.
var readerErrorRE = lazyRE(`^yaml: (invalid leading UTF-8 octet|incomplete UTF-8 octet sequence|invalid trailing UTF-8 octet|invalid length of a UTF-8 sequence|invalid Unicode character|control characters are not allowed)$`)

// unknownAnchorRE matches yaml.v3's message for an alias without anchor.
var unknownAnchorRE = lazyRE(`^yaml: unknown anchor '(.*)' referenced$`)

// locateError finds the line of a yaml.v3 error that carries none: the
// reader's (invalid UTF-8, control characters) directly from the bytes,
// and the parser's (unknown anchor, too deep nesting) as the shortest
// prefix of whole lines that fails with the same message. yaml.v3 reads
// and parses as a stream and reports its first error, so a prefix fails
// with that message exactly when it holds the offending token: the search
// is monotonic. Returns 0 when the line cannot be found.
func (l *loader) locateError(data []byte, msg string) int {
	if readerErrorRE().MatchString(msg) {
		if line := readerErrorLine(data); line > 0 {
			return line
		}
	}
	starts := lineStarts(data)
	// prefix returns the first n lines.
	prefix := func(n int) []byte {
		if n >= len(starts) {
			return data
		}
		return data[:starts[n]]
	}
	fails := func(n int) bool {
		p := prefix(n)
		if l.locate < len(p) {
			return false
		}
		l.locate -= len(p)
		var doc yaml.Node
		err := yaml.Unmarshal(p, &doc)
		return err != nil && err.Error() == msg
	}
	// An unknown anchor is nearly always at the first "*name": try it
	// before searching (two parses instead of about twenty).
	if m := unknownAnchorRE().FindStringSubmatch(msg); m != nil {
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			n := lineOf(starts, i)
			if fails(n) && (n == 1 || !fails(n-1)) {
				return n
			}
		}
	}
	lo, hi := 1, len(starts) // fails(hi) holds: it is the whole file
	if l.locate < len(data) {
		return 0
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		if l.locate < len(prefix(mid)) {
			return 0
		}
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// lineStarts returns the offset of the start of every line.
func lineStarts(data []byte) []int {
	starts := []int{0}
	for i, c := range data {
		if c == '\n' && i+1 < len(data) {
			starts = append(starts, i+1)
		}
	}
	return starts
}

// lineOf returns the 1-based line holding offset off.
func lineOf(starts []int, off int) int {
	lo, hi := 0, len(starts)-1
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		if starts[mid] <= off {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo + 1
}

// readerErrorLine returns the line of the first byte yaml.v3's reader
// refuses in UTF-8 input (invalid or incomplete UTF-8, or a character YAML
// does not allow), 0 if there is none or the input is UTF-16.
func readerErrorLine(data []byte) int {
	if bytes.HasPrefix(data, []byte{0xFE, 0xFF}) || bytes.HasPrefix(data, []byte{0xFF, 0xFE}) {
		return 0
	}
	line := 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 || !yamlPrintable(r) {
			return line
		}
		if r == '\n' {
			line++
		}
		i += size
	}
	return 0
}

// yamlPrintable is YAML 1.2's c-printable, as yaml.v3's reader checks it.
func yamlPrintable(r rune) bool {
	switch {
	case r == 0x09, r == 0x0A, r == 0x0D:
	case r >= 0x20 && r <= 0x7E:
	case r == 0x85:
	case r >= 0xA0 && r <= 0xD7FF:
	case r >= 0xE000 && r <= 0xFFFD:
	case r >= 0x10000 && r <= 0x10FFFF:
	default:
		return false
	}
	return true
}
