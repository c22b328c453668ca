package control

import (
	"fmt"
	"sync"
	"testing"

	"github.com/oakwire/oakwire/api"
)

// TestConcurrentDeploysTwoReplicas fires 500 concurrent instance deploys
// (some repeated, to exercise idempotency under contention) at two root
// replicas sharing one Redis: every instance gets one address pair, and no
// address is handed out twice.
func TestConcurrentDeploysTwoReplicas(t *testing.T) {
	_, rdb := startRedis(t)
	_, urlA := startRoot(t, rdb, rootOpts{})
	_, urlB := startRoot(t, rdb, rootOpts{})
	checkConcurrentDeploys(t, []string{urlA, urlB}, "")
}

// checkConcurrentDeploys deploys 4 services and 500 instances over the
// given root URLs concurrently and checks uniqueness (cmd/servicemanager
// does the same against a Redis Cluster).
func checkConcurrentDeploys(t *testing.T, urls []string, token string) {
	t.Helper()
	mustCall(t, 200, "POST", urls[0]+"/api/net/cluster", `{"cluster_id":"c1","cluster_address":"127.0.0.1","cluster_port":9}`, token, nil)
	const services, perService = 4, 125
	seen := map[string]string{}
	var mu sync.Mutex
	claim := func(addr, who string) {
		mu.Lock()
		defer mu.Unlock()
		if prev, ok := seen[addr]; ok && prev != who {
			t.Errorf("address %s handed to %s and %s", addr, prev, who)
		}
		seen[addr] = who
	}
	var wg sync.WaitGroup
	for s := range services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var d api.ServiceIPs
			mustCall(t, 200, "POST", urls[s%len(urls)]+"/api/net/service/deploy", svcBody(fmt.Sprintf("s%d", s), fmt.Sprintf("svc%d", s), ""), token, &d)
			for _, ip := range d.ServiceIPList {
				claim(ip.Address.String(), fmt.Sprintf("s%d/%s", s, ip.IpType))
				claim(ip.AddressV6.String(), fmt.Sprintf("s%d/%s", s, ip.IpType))
			}
		}()
	}
	wg.Wait()
	type res struct {
		who    string
		v4, v6 string
	}
	results := make(chan res, services*perService)
	for i := range services * perService {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, n := i%services, i/services
			if i%10 == 9 {
				n-- // a repeat of an instance deployed concurrently: idempotent
			}
			var ia api.InstanceAnswer
			mustCall(t, 200, "POST", urls[i%len(urls)]+"/api/net/instance/deploy",
				fmt.Sprintf(`{"_id":"s%d","instance_number":%d,"cluster_id":"c1"}`, s, n), token, &ia)
			results <- res{who: fmt.Sprintf("s%d/%d", s, n), v4: ia.InstanceIP.String(), v6: ia.InstanceIPv6.String()}
		}()
	}
	wg.Wait()
	close(results)
	pairs := map[string][2]string{}
	for r := range results {
		if p, ok := pairs[r.who]; ok && p != [2]string{r.v4, r.v6} {
			t.Errorf("%s got %v and %v", r.who, p, [2]string{r.v4, r.v6})
		}
		pairs[r.who] = [2]string{r.v4, r.v6}
		claim(r.v4, r.who)
		claim(r.v6, r.who)
	}
	if len(seen) != 2*(services*2+len(pairs)) {
		t.Errorf("%d distinct addresses for %d services and %d instances", len(seen), services, len(pairs))
	}
	t.Logf("%d instances, %d distinct addresses", len(pairs), len(seen))
}
