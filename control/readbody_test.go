package control

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// streamed reads raw (a request) the way NewServer's fasthttp does
// (StreamRequestBody) into ctx.
func streamed(tb testing.TB, ctx *fasthttp.RequestCtx, br *bufio.Reader, raw string) {
	br.Reset(strings.NewReader(raw))
	ctx.Request.Reset()
	if err := ctx.Request.Header.Read(br); err != nil {
		tb.Fatal(err)
	}
	if err := ctx.Request.ContinueReadBodyStream(br, MaxBody); err != nil {
		tb.Fatal(err)
	}
}

// TestReadBody: a body of known length, small or not, and a chunked one
// all end up whole in the request.
func TestReadBody(t *testing.T) {
	big := strings.Repeat("x", 100<<10)
	for _, c := range []struct{ name, raw, want string }{
		{"small", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", "hello"},
		{"empty", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", ""},
		{"past the prefetch", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 102400\r\n\r\n" + big, big},
		{"chunked", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "hello"},
	} {
		var ctx fasthttp.RequestCtx
		streamed(t, &ctx, bufio.NewReader(nil), c.raw)
		if err := readBody(&ctx); err != nil {
			t.Errorf("%s: %v", c.name, err)
		} else if got := ctx.PostBody(); !bytes.Equal(got, []byte(c.want)) {
			t.Errorf("%s: body of %d bytes, want %d", c.name, len(got), len(c.want))
		}
	}
}

// BenchmarkReadBody: an instance deploy's body, streamed by fasthttp and
// taken into the request.
func BenchmarkReadBody(b *testing.B) {
	const body = `{"_id":"s17","instance_number":42,"cluster_id":"c1"}`
	raw := "POST /api/net/instance/deploy HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body
	var ctx fasthttp.RequestCtx
	br := bufio.NewReader(nil)
	b.ReportAllocs()
	for b.Loop() {
		streamed(b, &ctx, br, raw)
		if err := readBody(&ctx); err != nil || len(ctx.PostBody()) != len(body) {
			b.Fatal(err, len(ctx.PostBody()))
		}
	}
}
