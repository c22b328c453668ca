package api

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
)

// Int is an integer field that also reads a JSON string of decimal digits:
// Oakestra's Python components send some numbers as strings (host_port in
// net_deploy_status, cluster_port at cluster registration, both read from
// the environment or MQTT as text). It is written as a JSON number.
type Int int

// UnmarshalJSON reads 50103 or "50103". Anything else is a
// *json.UnmarshalTypeError, so decoders name the field.
func (n *Int) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	s, quoted := b, false
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		s, quoted = b[1:len(b)-1], true
	}
	v, err := strconv.Atoi(string(s))
	if err != nil {
		what := "number " + string(b)
		if quoted {
			what = "string " + string(b)
		} else if len(b) > 0 && !(b[0] == '-' || b[0] >= '0' && b[0] <= '9') {
			what = jsonKind(b)
		}
		return &json.UnmarshalTypeError{Value: what, Type: reflect.TypeFor[int]()}
	}
	*n = Int(v)
	return nil
}

// jsonKind names the JSON type of the value b starts.
func jsonKind(b []byte) string {
	switch b[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "bool"
	}
	return "value"
}
