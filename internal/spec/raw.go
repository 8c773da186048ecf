package spec

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
)

// pointerPath turns a JSON pointer into the path of keys and indexes a
// user writes, following the Spec type to tell a list's index ("[0]")
// from an object's key.
func pointerPath(p jsontext.Pointer) []string {
	t := reflect.TypeFor[Spec]()
	var path []string
	for tok := range p.Tokens() {
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case t == nil:
			path = append(path, tok)
		case t.Kind() == reflect.Slice:
			path = append(path, "["+tok+"]")
			t = t.Elem()
		case t.Kind() == reflect.Map:
			path = append(path, tok)
			t = t.Elem()
		case t.Kind() == reflect.Struct:
			path = append(path, tok)
			t = fieldType(t, tok)
		default:
			path = append(path, tok)
			t = nil
		}
	}
	return path
}

// fieldType is the type of the field of struct t whose JSON name is name,
// or nil.
func fieldType(t reflect.Type, name string) reflect.Type {
	for i := 0; i < t.NumField(); i++ {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); tag == name {
			return t.Field(i).Type
		}
	}
	return nil
}

// pathError makes an *Error for a path of keys and indexes in the document:
// services.NAME.FIELD… names the service, anything else a top-level field.
func pathError(path []string, msg string) *Error {
	e := &Error{Msg: msg}
	if len(path) >= 2 && path[0] == "services" {
		e.Service = strings.ToValidUTF8(path[1], "\uFFFD")
		path = path[2:]
	}
	e.Field = strings.ToValidUTF8(joinPath(path), "\uFFFD")
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

// typeWords names what a field of Go type t holds as a user writes it:
// "a list of strings", never "[]string".
func typeWords(t reflect.Type) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return "another kind of value"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Float32, reflect.Float64, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a number"
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.String {
			return "a list of strings"
		}
		return "a list"
	case reflect.Map:
		if t.Elem().Kind() == reflect.String {
			return "an object of strings"
		}
		return "an object"
	case reflect.Struct:
		return "an object"
	}
	return "another kind of value"
}
