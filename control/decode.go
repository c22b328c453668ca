package control

import (
	"encoding"
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strconv"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// decodeBody unmarshals the request body into v, a pointer to a request
// type of package api, and checks the fields that type tags
// wire:"required" (present and not null). Every error names its field:
// malformed JSON, a value of the wrong JSON type, an address that does not
// parse, a required field missing.
func decodeBody(ctx *fasthttp.RequestCtx, v any) error {
	body := ctx.PostBody()
	if len(body) == 0 {
		return badf(api.CodeBadJSON, "body: empty, want a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return badf(api.CodeBadJSON, "body: malformed JSON at offset %d: %v", se.Offset, se)
		case errors.As(err, &te):
			field := te.Field
			if field == "" {
				field = "body"
			}
			return badf(api.CodeBadType, "%s: want %s, got JSON %s", field, te.Type, te.Value)
		}
		// encoding/json does not say where a text value (an address)
		// failed to parse: find it.
		if path, val, ok := badText(body, v); ok {
			return badf(api.CodeBadAddress, "%s: %q is not an IP address", path, val)
		}
		return badf(api.CodeBadJSON, "body: %v", err)
	}
	var raw any
	_ = json.Unmarshal(body, &raw)
	var err error
	walkJSON(raw, reflect.TypeOf(v), "", func(path string, f reflect.StructField, val any, present bool) bool {
		if f.Tag.Get("wire") == "required" && (!present || val == nil) {
			err = missing(path)
		}
		return err == nil
	})
	return err
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// badText finds the first string in body that v's type reads as text (a
// netip.Addr) and that does not parse, and returns its path and value.
func badText(body []byte, v any) (path, val string, ok bool) {
	var raw any
	if json.Unmarshal(body, &raw) != nil {
		return "", "", false
	}
	walkJSON(raw, reflect.TypeOf(v), "", func(p string, f reflect.StructField, j any, _ bool) bool {
		s, isStr := j.(string)
		if !isStr || !reflect.PointerTo(f.Type).Implements(textUnmarshaler) {
			return true
		}
		if reflect.New(f.Type).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)) != nil {
			path, val, ok = p, s, true
		}
		return !ok
	})
	return path, val, ok
}

// walkJSON calls f for each field of the struct type t (or pointer to, or
// slice of, such a struct), depth first in field order, with its JSON
// path ("instances[0].host_ip"), the value decoded JSON j holds for it
// and whether it holds one. Keys match as encoding/json matches them:
// exactly, else ignoring case. f returns false to stop the walk; so does
// walkJSON.
func walkJSON(j any, t reflect.Type, path string, f func(path string, field reflect.StructField, v any, present bool) bool) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		list, _ := j.([]any)
		for i, e := range list {
			if !walkJSON(e, t.Elem(), path+"["+strconv.Itoa(i)+"]", f) {
				return false
			}
		}
		return true
	case reflect.Struct:
		if t == reflect.TypeFor[netip.Addr]() || t == reflect.TypeFor[netip.Prefix]() {
			return true
		}
	default:
		return true
	}
	obj, _ := j.(map[string]any)
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if sf.Anonymous && name == "" {
			if !walkJSON(j, sf.Type, path, f) {
				return false
			}
			continue
		}
		if !sf.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		v, present := lookup(obj, name)
		p := name
		if path != "" {
			p = path + "." + name
		}
		if !f(p, sf, v, present) || (present && !walkJSON(v, sf.Type, p, f)) {
			return false
		}
	}
	return true
}

func lookup(obj map[string]any, name string) (any, bool) {
	if v, ok := obj[name]; ok {
		return v, true
	}
	for k, v := range obj {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return nil, false
}
