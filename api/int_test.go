package api

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestIntReadsStrings: numbers and numeric strings read (Oakestra sends
// ports as strings), anything else is a type error naming the field; the
// value is written as a number.
func TestIntReadsStrings(t *testing.T) {
	type body struct {
		Port Int `json:"port"`
	}
	for _, tc := range []struct {
		in   string
		want Int
		ok   bool
	}{
		{`{"port":50103}`, 50103, true},
		{`{"port":"50103"}`, 50103, true},
		{`{"port":null}`, 0, true},
		{`{"port":"50103x"}`, 0, false},
		{`{"port":""}`, 0, false},
		{`{"port":1.5}`, 0, false},
		{`{"port":true}`, 0, false},
		{`{"port":[1]}`, 0, false},
	} {
		var b body
		err := json.Unmarshal([]byte(tc.in), &b)
		if (err == nil) != tc.ok || b.Port != tc.want {
			t.Errorf("%s: %v, %v; want %v, ok %v", tc.in, b.Port, err, tc.want, tc.ok)
		}
		var te *json.UnmarshalTypeError
		if err != nil && (!errors.As(err, &te) || te.Field != "port") {
			t.Errorf("%s: error %v is not a type error naming port", tc.in, err)
		}
	}
	out, _ := json.Marshal(body{Port: 80})
	if !strings.Contains(string(out), `"port":80`) {
		t.Errorf("marshal: %s", out)
	}
}
