package control

import (
	"testing"

	"github.com/oakwire/oakwire/api"
	"github.com/valyala/fasthttp"
)

// FuzzFastDeployInstance: whatever body the fast decoder accepts,
// decodeBody accepts too, with the same result; what it refuses goes to
// decodeBody, so answers do not change.
func FuzzFastDeployInstance(f *testing.F) {
	for _, s := range []string{
		`{"_id":"s1","instance_number":3,"cluster_id":"c1"}`,
		` { "system_job_id" : "s1" , "instance_number" : 0 , "cluster_id" : "c1" } `,
		`{"_id":"s1","instance_number":"3","cluster_id":"c1"}`,
		`{"_id":"s1","instance_number":03,"cluster_id":"c1"}`,
		`{"_id":"s1","instance_number":3.0,"cluster_id":"c1"}`,
		`{"_id":"s1","instance_number":-3,"cluster_id":"c1"}`,
		`{"_id":"s1","instance_number":1234567890,"cluster_id":"c1"}`,
		`{"_id":"s\u0031","instance_number":3,"cluster_id":"c1"}`,
		`{"_id":"s1","_id":"s2","instance_number":3,"cluster_id":"c1"}`,
		`{"_ID":"s1","instance_number":3,"cluster_id":"c1"}`,
		`{"_id":"s1","instance_number":3}`,
		`{"_id":"s1","instance_number":3,"cluster_id":null}`,
		`{"_id":"s1","instance_number":3,"cluster_id":"c1"}x`,
		`{"_id":"s1","instance_number":3,"cluster_id":"c1",}`,
		`{}`, ``, `[]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var fast api.DeployInstance
		if !fastDeployInstance([]byte(body), &fast) {
			return
		}
		var ctx fasthttp.RequestCtx
		ctx.Request.SetBodyString(body)
		var slow api.DeployInstance
		if err := decodeBody(&ctx, &slow); err != nil {
			t.Fatalf("%q: fast path accepts, decodeBody: %v", body, err)
		}
		if fast != slow {
			t.Fatalf("%q: fast %+v, decodeBody %+v", body, fast, slow)
		}
	})
}

// TestFastDeployInstanceTakesThePlainShape: the body orchestrators send
// takes the fast path (else it would not save anything).
func TestFastDeployInstanceTakesThePlainShape(t *testing.T) {
	var v api.DeployInstance
	if !fastDeployInstance([]byte(`{"_id":"s1","instance_number":12,"cluster_id":"c1"}`), &v) ||
		v != (api.DeployInstance{ID: "s1", InstanceNumber: 12, ClusterID: "c1"}) {
		t.Errorf("plain body: %+v", v)
	}
}
