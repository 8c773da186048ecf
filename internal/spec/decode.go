package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
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

func decode(data []byte) (*Spec, error) {
	var top map[string]json.RawMessage
	if err := strictUnmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if top == nil {
		return nil, fmt.Errorf("not a JSON object")
	}
	if err := checkRaw(data); err != nil {
		return nil, err
	}
	if z, ok := top["zone"]; ok && string(bytes.TrimSpace(z)) == `""` {
		return nil, &Error{Field: "zone", Msg: fmt.Sprintf("must not be empty (leave it out for the default %q)", DefaultZone)}
	}
	s := &Spec{Services: map[string]*Service{}}
	var rawServices map[string]json.RawMessage
	if err := decodeFields(top, s, map[string]any{"services": &rawServices}); err != nil {
		return nil, err
	}
	for name, raw := range rawServices {
		svc := &Service{}
		var fields map[string]json.RawMessage
		if err := strictUnmarshal(raw, &fields); err != nil || fields == nil {
			return nil, &Error{Service: name, Msg: "want a JSON object"}
		}
		if err := decodeFields(fields, svc, nil); err != nil {
			var se *Error
			if errors.As(err, &se) {
				se.Service = name
			}
			return nil, err
		}
		s.Services[name] = svc
	}
	return s, nil
}

// decodeFields decodes each field of fields into the struct dst points to, by
// json tag, so that an error names the exact field. override redirects some
// fields to other destinations. Unknown fields are errors.
func decodeFields(fields map[string]json.RawMessage, dst any, override map[string]any) error {
	v := reflect.ValueOf(dst).Elem()
	t := v.Type()
	index := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if tag != "" && tag != "-" {
			index[tag] = i
		}
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var target any
		if o, ok := override[k]; ok {
			target = o
		} else if i, ok := index[k]; ok {
			target = v.Field(i).Addr().Interface()
		} else {
			return &Error{Msg: fmt.Sprintf("unknown field %q", k)}
		}
		if err := strictUnmarshal(fields[k], target); err != nil {
			return &Error{Field: k, Msg: describe(err)}
		}
	}
	return nil
}

// strictUnmarshal decodes exactly one JSON value, refusing unknown fields and trailing data.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}

func describe(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("%s: want %s, not %s", te.Field, te.Type, te.Value)
		}
		return fmt.Sprintf("want %s, not %s", te.Type, te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return "invalid JSON: " + se.Error()
	}
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "json: ")
	return msg
}
