package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// checkRaw refuses what encoding/json accepts silently: a key given twice in
// one object (the last would win) and a string that is not valid UTF-8 (it
// would be replaced by U+FFFD). It walks the whole document, so that the error
// names the service and field at any depth. Syntax errors are left to the
// decoder, which describes them better.
func checkRaw(data []byte) error {
	w := rawWalker{dec: json.NewDecoder(bytes.NewReader(data)), data: data}
	w.dec.UseNumber()
	err := w.value(nil)
	if _, ok := err.(*Error); ok {
		return err
	}
	return nil
}

type rawWalker struct {
	dec  *json.Decoder
	data []byte
}

// token reads the next token and checks that a string token was valid
// UTF-8 in the input.
func (w *rawWalker) token(path []string) (json.Token, error) {
	start := w.dec.InputOffset()
	tok, err := w.dec.Token()
	if err != nil {
		return nil, err
	}
	if s, ok := tok.(string); ok && !validUTF8(w.data[start:w.dec.InputOffset()], s) {
		return nil, pathError(path, "is not valid UTF-8")
	}
	return tok, nil
}

func (w *rawWalker) value(path []string) error {
	tok, err := w.token(path)
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for w.dec.More() {
			// A key's own encoding is checked against the object's path
			// plus the key, so the error names it.
			start := w.dec.InputOffset()
			ktok, err := w.dec.Token()
			if err != nil {
				return err
			}
			key, _ := ktok.(string)
			kpath := append(path[:len(path):len(path)], key)
			if !validUTF8(w.data[start:w.dec.InputOffset()], key) {
				return pathError(kpath, "key is not valid UTF-8")
			}
			if seen[key] {
				return pathError(kpath, "key given twice")
			}
			seen[key] = true
			if err := w.value(kpath); err != nil {
				return err
			}
		}
		_, err = w.dec.Token()
		return err
	case json.Delim('['):
		for i := 0; w.dec.More(); i++ {
			if err := w.value(append(path[:len(path):len(path)], "["+strconv.Itoa(i)+"]")); err != nil {
				return err
			}
		}
		_, err = w.dec.Token()
		return err
	}
	return nil
}

// validUTF8 reports whether the raw JSON text of a string decoded to s
// without replacement: the text is valid UTF-8, and every U+FFFD in s was
// written as such rather than produced from a lone surrogate escape.
func validUTF8(raw []byte, s string) bool {
	if !utf8.Valid(raw) {
		return false
	}
	got := strings.Count(s, "\uFFFD")
	if got == 0 {
		return true
	}
	written := bytes.Count(raw, []byte("\uFFFD")) + bytes.Count(bytes.ToLower(raw), []byte(`\ufffd`))
	return got <= written
}

// pathError makes an *Error for a path of keys and indexes in the document:
// services.NAME.FIELD… names the service, anything else a top-level field.
func pathError(path []string, msg string) *Error {
	e := &Error{Msg: msg}
	if len(path) >= 2 && path[0] == "services" {
		e.Service = path[1]
		path = path[2:]
	}
	e.Field = joinPath(path)
	return e
}

// joinPath writes a path as a user writes it: env.PORT, exec[0].
func joinPath(path []string) string {
	var b strings.Builder
	for _, p := range path {
		if b.Len() > 0 && !strings.HasPrefix(p, "[") {
			b.WriteByte('.')
		}
		b.WriteString(p)
	}
	return b.String()
}

// fieldIndex names element i of a list field: exec[0].
func fieldIndex(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }
