package spec

import (
	"bytes"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Error is a spec error a user sees: it names the file, service and field.
type Error struct {
	File    string
	Service string // empty for top-level fields
	Field   string // e.g. "env.PORT", "needs"; empty when the message says it
	Msg     string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	if e.Service != "" {
		fmt.Fprintf(&b, "service %q: ", e.Service)
	}
	if e.Field != "" && !strings.HasPrefix(e.Msg, e.Field+" ") {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Decode strictly decodes and validates a spec in its canonical JSON form.
// file names the source in errors. Every error is an *Error.
func Decode(file string, data []byte) (*Spec, error) {
	return DecodeIn(file, data, "")
}

// DecodeIn is Decode for a spec file in directory base: a relative package
// path ("./build/shop") is taken relative to base. With base "", relative
// package paths are errors.
func DecodeIn(file string, data []byte, base string) (*Spec, error) {
	s, err := decode(data)
	if err != nil {
		var se *Error
		if errors.As(err, &se) {
			se.File = file
			return nil, se
		}
		return nil, &Error{File: file, Msg: err.Error()}
	}
	if base != "" {
		for _, svc := range s.Services {
			if svc != nil && svc.Package != "" && !filepath.IsAbs(svc.Package) {
				svc.Package = filepath.Join(base, svc.Package)
			}
		}
	}
	if err := s.Validate(); err != nil {
		var se *Error
		if errors.As(err, &se) {
			se.File = file
		}
		return nil, err
	}
	return s, nil
}

// decodeOptions decode a spec strictly: an unknown field is an error, and
// names match exactly ("Path" is not "path"). jsontext's defaults refuse
// a key given twice in one object (encoding/json lets the last win) and
// text that is not valid UTF-8 (encoding/json makes it U+FFFD).
var decodeOptions = json.RejectUnknownMembers(true)

// decode reads data into a Spec. Each error names where it is, in the
// words a user writes the spec in: services.api.exec[0], not a Go type.
func decode(data []byte) (*Spec, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &Error{Msg: "is empty: want a JSON object"}
	}
	if k := jsontext.Value(bytes.TrimSpace(data)).Kind(); k != '{' && isJSONKind(k) {
		return nil, &Error{Msg: "want a JSON object, not " + kindWords(k)}
	}
	if err := checkWritten(data); err != nil {
		return nil, err
	}
	s := &Spec{}
	dec := jsontext.NewDecoder(bytes.NewReader(data))
	err := json.UnmarshalDecode(dec, s, decodeOptions)
	if err == nil {
		end := dec.InputOffset()
		if _, err := dec.ReadToken(); err != io.EOF {
			end += int64(len(data[end:]) - len(bytes.TrimLeft(data[end:], " \t\r\n")))
			return nil, syntaxError(data, end, "trailing data after the JSON value")
		}
	}
	if err != nil {
		return nil, decodeError(data, err)
	}
	if s.Services == nil {
		s.Services = map[string]*Service{}
	}
	return s, nil
}

// written holds, as written, the values that decoding into a Spec would
// change: a zero that reads as something else than what a user who
// writes it means ("cpu": 0 and "memory": "" would be no limit, "zone": ""
// the default zone, "placement": {"node": ""} any node: leaving the field
// out says that), and a cpu that no
// float64 holds (1e400). (A duration refuses its zero itself,
// Duration.UnmarshalJSON.) A null is the field left out.
type written struct {
	Zone     jsontext.Value `json:"zone"`
	Services map[string]*struct {
		Memory    jsontext.Value `json:"memory"`
		CPU       jsontext.Value `json:"cpu"`
		Placement *struct {
			Node jsontext.Value `json:"node"`
		} `json:"placement"`
	} `json:"services"`
}

// checkWritten refuses what written holds that the spec may not say.
// Values of the wrong kind are left to the decoding into a Spec.
func checkWritten(data []byte) error {
	var w written
	if json.Unmarshal(data, &w) != nil {
		return nil
	}
	if string(w.Zone) == `""` {
		return &Error{Field: "zone", Msg: fmt.Sprintf("must not be empty (leave it out for the default %q)", DefaultZone)}
	}
	for _, name := range sortedKeys(w.Services) {
		svc := w.Services[name]
		if svc == nil {
			continue
		}
		if string(svc.Memory) == `""` {
			return &Error{Service: name, Field: "memory", Msg: "must not be empty (leave it out for no limit)"}
		}
		if svc.Placement != nil && string(svc.Placement.Node) == `""` {
			return &Error{Service: name, Field: "placement.node", Msg: "must not be empty (leave it out for any node)"}
		}
		if svc.CPU.Kind() == '0' {
			// ParseFloat makes 1e400 +Inf, and 1e-400 0: both outside.
			f, _ := strconv.ParseFloat(string(svc.CPU), 64)
			if msg := checkCPU(f, string(svc.CPU)); msg != "" {
				return &Error{Service: name, Field: "cpu", Msg: msg}
			}
		}
	}
	return nil
}

// decodeError turns an error of decoding data into a Spec into an *Error
// that says where and what, in user words.
func decodeError(data []byte, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &Error{Msg: "invalid JSON: it ends before the object does"}
	}
	var syn *jsontext.SyntacticError
	if errors.As(err, &syn) {
		path := pointerPath(syn.JSONPointer)
		switch {
		case errors.Is(syn.Err, jsontext.ErrDuplicateName):
			return pathError(path, "key given twice")
		case stdjson.Valid(data):
			// Syntax encoding/json accepts is refused here for one other
			// reason only: text that is not valid UTF-8 (raw bytes, or a
			// lone surrogate escape that would become U+FFFD).
			return pathError(path, "is not valid UTF-8")
		}
		off, reason := syntaxReason(data)
		return syntaxError(data, off, reason)
	}
	var sem *json.SemanticError
	if errors.As(err, &sem) {
		return semanticError(sem)
	}
	return &Error{Msg: "invalid JSON"}
}

// semanticError words a value of the wrong kind, an unknown field or a
// value a field's own decoding refused.
func semanticError(se *json.SemanticError) error {
	path := pointerPath(se.JSONPointer)
	var own *Error
	switch {
	case errors.Is(se.Err, json.ErrUnknownName) && len(path) > 0:
		return pathError(path[:len(path)-1], fmt.Sprintf("unknown field %q", path[len(path)-1]))
	case errors.As(se.Err, &own):
		// The field's own UnmarshalJSON, in user words already.
		return pathError(path, own.Msg)
	case se.JSONKind == '0' && len(se.JSONValue) > 0 && se.Err != nil:
		if integral(se.GoType) && bytes.ContainsAny(se.JSONValue, ".eE") {
			return pathError(path, fmt.Sprintf("want a whole number, not %s", se.JSONValue))
		}
		return pathError(path, fmt.Sprintf("%s is out of range", se.JSONValue))
	}
	return pathError(path, fmt.Sprintf("want %s, not %s", typeWords(se.GoType), kindWords(se.JSONKind)))
}

// integral reports whether t is an integer type.
func integral(t reflect.Type) bool {
	if t == nil {
		return false
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// syntaxError says what is wrong at byte offset off of data, by line and column.
func syntaxError(data []byte, off int64, what string) *Error {
	off = min(max(off, 0), int64(len(data)))
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := int(off) - bytes.LastIndexByte(data[:off], '\n')
	return &Error{Msg: fmt.Sprintf("invalid JSON at line %d, column %d: %s", line, col, what)}
}

// syntaxReason returns where data's syntax error is and encoding/json's
// wording of it ("invalid character 'x' looking for beginning of value"),
// which names no Go type.
func syntaxReason(data []byte) (int64, string) {
	var v any
	err := stdjson.Unmarshal(data, &v)
	var se *stdjson.SyntaxError
	if errors.As(err, &se) {
		// Offset counts the bytes read, the bad one included.
		return se.Offset - 1, se.Error()
	}
	return int64(len(data)), "invalid JSON"
}

// isJSONKind reports whether k is the kind of a JSON value.
func isJSONKind(k jsontext.Kind) bool {
	switch k {
	case 'n', 'f', 't', '"', '0', '{', '[':
		return true
	}
	return false
}

// kindWords names a JSON value's kind as a user reads it.
func kindWords(k jsontext.Kind) string {
	switch k {
	case 'n':
		return "null"
	case 'f':
		return "false"
	case 't':
		return "true"
	case '"':
		return "a string"
	case '0':
		return "a number"
	case '{':
		return "an object"
	case '[':
		return "a list"
	}
	return "that"
}
