package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/oakwire/oakwire/api"
	"github.com/oakwire/oakwire/ipam"
	"github.com/oakwire/oakwire/policy"
)

// The store's operations on services and instances. An instance is one
// script on its service's shard; a service spans its shard and the job
// index (pending.go).

// policyIPs asks for the service IP pair of one policy: Custom4 and
// Custom6, when valid, are the addresses the request wants.
type policyIPs struct {
	Policy           policy.ID
	Custom4, Custom6 netip.Addr
}

// customTakenError: the address asked for policy Policy is not free.
type customTakenError struct {
	Policy policy.ID
	Err    error // ipam's
}

func (e *customTakenError) Error() string { return e.Policy.String() + ": " + e.Err.Error() }
func (e *customTakenError) Unwrap() error { return e.Err }

// deployService creates service id named job with one service IP pair per
// entry of want, or finds it. It returns the service's record and whether
// it existed already (then nothing was allocated; the caller checks the
// addresses asked for). Errors: *takenError, *customTakenError, errReclaimed,
// ipam's.
//
// Steps: the placement of each pair (a custom address in another shard's
// block is allocated there); prepare (the intents, in the shard); the job
// name (the index, in {r}); the allocation (in the shards placed);
// commit (the record, in the shard). A refusal after prepare undoes what
// was allocated, without quarantine: nobody saw those addresses.
func (s *rootStore) deployService(c context.Context, id, job string, want []policyIPs) (serviceMeta, bool, error) {
	if err := s.ready(c); err != nil {
		return serviceMeta{}, false, err
	}
	home := s.shard(id)
	reqs := make([]ipam.Request, len(want))
	where := make([]ipam.Where, len(want))
	args := []any{s.st(id), id, job, s.staleArg()}
	for i, w := range want {
		reqs[i] = ipam.Request{Owner: newOwner(svcOwnerBase(id, w.Policy.String())), Kind: ipam.Kind(w.Policy), Custom4: w.Custom4, Custom6: w.Custom6}
		var err error
		if where[i], err = s.pool.Place(c, home, reqs[i]); err != nil {
			return serviceMeta{}, false, fmt.Errorf("deploy service: %w", nameCustom(err, reqs, want))
		}
		args = append(args, w.Policy.String(), reqs[i].Owner, strconv.Itoa(where[i].V4), strconv.Itoa(where[i].V6))
	}
	rep, err := s.step(c, prepareServiceScript, id, "deploy service: prepare", args...)
	if err := serviceReply(rep, err); err != nil || rep.code == 0 {
		return metaOf(rep, err)
	}
	ownerList := rep.list()
	if len(ownerList) != len(want) {
		return serviceMeta{}, false, fmt.Errorf("deploy service: prepare: %d owners for %d policies", len(ownerList), len(want))
	}
	slots := make([]string, len(want))
	for i, w := range want {
		reqs[i].Owner, _ = ownerList[i].(string)
		slots[i] = "p:" + w.Policy.String()
	}
	owners := func() []string {
		o := make([]string, len(reqs))
		for i := range reqs {
			o[i] = reqs[i].Owner
		}
		return o
	}
	created, err := s.claimJob(c, job, id)
	if err != nil {
		return serviceMeta{}, false, s.abandon(c, id, slots, owners(), err)
	}
	// A refusal from here on gives the job name back if this call took it.
	unclaim := func(err error) error {
		if created && definite(err) {
			if uerr := swapJobScript.Run(c, s.rdb, []string{s.kJobs()}, job, id, "").Err(); uerr != nil {
				return errors.Join(err, redisErr("deploy service: job name", uerr))
			}
		}
		return err
	}
	if err := s.hook("deploy service: job"); err != nil {
		return serviceMeta{}, false, err
	}
	pairs, err := s.allocPlaced(c, reqs, where)
	if err != nil {
		err = nameCustom(err, reqs, want)
		return serviceMeta{}, false, unclaim(s.afterAllocErr(c, id, slots, owners(), fmt.Errorf("deploy service: allocate service IPs: %w", err)))
	}
	if err := s.hook("deploy service: allocation"); err != nil {
		return serviceMeta{}, false, err
	}
	meta := serviceMeta{ID: id, JobName: job, Owners: map[string]string{}}
	args = []any{s.st(id), id, job, nil}
	for i, w := range want {
		name := w.Policy.String()
		meta.ServiceIPList = append(meta.ServiceIPList, api.ServiceIP{IpType: name, Address: pairs[i].V4, AddressV6: pairs[i].V6})
		meta.Owners[name] = reqs[i].Owner
		args = append(args, name, reqs[i].Owner)
	}
	b, _ := json.Marshal(meta)
	args[3] = string(b)
	// A failure here leaves the intent: a retry gets the same addresses, the
	// sweep frees them if none comes.
	rep, err = s.step(c, commitServiceScript, id, "deploy service: store", args...)
	if err := serviceReply(rep, err); err != nil {
		var taken *takenError
		if errors.As(err, &taken) {
			return serviceMeta{}, false, unclaim(err)
		}
		return serviceMeta{}, false, err
	} else if rep.code == 0 {
		return metaOf(rep, err)
	}
	s.jobs.Store(job, id)
	return meta, false, nil
}

// allocPlaced allocates each request's families in the shards where
// places them: one all-or-nothing batch per shard.
func (s *rootStore) allocPlaced(c context.Context, reqs []ipam.Request, where []ipam.Where) ([]ipam.Pair, error) {
	type group struct {
		shard int
		fams  string
	}
	var order []group
	idx := map[group][]int{}
	add := func(g group, i int) {
		if _, ok := idx[g]; !ok {
			order = append(order, g)
		}
		idx[g] = append(idx[g], i)
	}
	for i, w := range where {
		if w.V4 == w.V6 {
			add(group{w.V4, "46"}, i)
		} else {
			add(group{w.V4, "4"}, i)
			add(group{w.V6, "6"}, i)
		}
	}
	// Groups with a custom address first: those are the ones likely to be
	// refused, and then nothing else was allocated (or claimed).
	custom := func(g group) bool {
		for _, i := range idx[g] {
			if reqs[i].Custom4.IsValid() || reqs[i].Custom6.IsValid() {
				return true
			}
		}
		return false
	}
	slices.SortStableFunc(order, func(a, b group) int {
		switch ca, cb := custom(a), custom(b); {
		case ca && !cb:
			return -1
		case cb && !ca:
			return 1
		}
		return 0
	})
	out := make([]ipam.Pair, len(reqs))
	for _, g := range order {
		batch := make([]ipam.Request, len(idx[g]))
		for j, i := range idx[g] {
			batch[j] = reqs[i]
		}
		pairs, err := s.pool.AllocIn(c, g.shard, g.fams, batch)
		if err != nil {
			return nil, err
		}
		for j, i := range idx[g] {
			if strings.Contains(g.fams, "4") {
				out[i].V4 = pairs[j].V4
			}
			if strings.Contains(g.fams, "6") {
				out[i].V6 = pairs[j].V6
			}
		}
	}
	return out, nil
}

// claimJob makes job id's in the job index. A holder whose record is
// another job's or gone, and that has no deploy in flight, left the claim
// behind (a deploy that failed, a delete cut short): it is taken over.
func (s *rootStore) claimJob(c context.Context, job, id string) (created bool, err error) {
	for range 2 {
		res, err := claimJobScript.Run(c, s.rdb, []string{s.kJobs()}, job, id).Slice()
		if err != nil {
			return false, redisErr("deploy service: job name", err)
		}
		if code(res) >= 0 {
			return code(res) == 1, nil
		}
		holder := strAt(res, 1)
		pr, err := probeServiceScript.Run(c, s.rdb, []string{s.kSvc(holder)}, s.st(holder), holder, s.staleArg()).Slice()
		if err != nil {
			return false, redisErr("deploy service: job name holder", err)
		}
		if strAt(pr, 0) == job || len(pr) > 1 && pr[1] == int64(1) {
			return false, &takenError{Holder: holder}
		}
		if err := swapJobScript.Run(c, s.rdb, []string{s.kJobs()}, job, holder, id).Err(); err != nil {
			return false, redisErr("deploy service: job name", err)
		}
		s.jobs.Delete(job)
	}
	return false, fmt.Errorf("deploy service: job name %s keeps changing holder: %w", job, errRedis)
}

// hook runs the test's fault injection after step.
func (s *rootStore) hook(step string) error {
	if s.fault == nil {
		return nil
	}
	return s.fault(step)
}

// serviceReply is the error of a prepare or commit of a service.
func serviceReply(rep reply, err error) error {
	switch {
	case err != nil:
		return err
	case rep.code == -3:
		return &takenError{Job: rep.str()}
	case rep.code == -4:
		return fmt.Errorf("deploy service: %w", errReclaimed)
	}
	return nil
}

// metaOf is deployService's answer for an existing service (payload: its
// record) or an error.
func metaOf(rep reply, err error) (serviceMeta, bool, error) {
	var m serviceMeta
	if err != nil {
		return m, false, err
	}
	if err := json.Unmarshal([]byte(rep.str()), &m); err != nil {
		return m, false, fmt.Errorf("deploy service: stored meta: %w", err)
	}
	return m, true, nil
}

// nameCustom names the policy whose custom address made an allocation
// fail as taken: ipam's error starts "alloc <owner> ...".
func nameCustom(err error, reqs []ipam.Request, want []policyIPs) error {
	if !errors.Is(err, ipam.ErrConflict) {
		return err
	}
	for i, q := range reqs {
		if (q.Custom4.IsValid() || q.Custom6.IsValid()) && strings.Contains(err.Error(), q.Owner+" ") {
			return &customTakenError{Policy: want[i].Policy, Err: err}
		}
	}
	return err
}

// deleteService deletes service id, which must have no instances, and
// frees its service IPs; it returns the deleted record. errNoService,
// errHasInstances.
func (s *rootStore) deleteService(c context.Context, id string) (serviceMeta, []hint, error) {
	var m serviceMeta
	if err := s.ready(c); err != nil {
		return m, nil, err
	}
	// step also finishes what an earlier, half-finished attempt left (its
	// retry lands here as -1).
	rep, err := s.step(c, deleteServiceScript, id, "delete service", s.st(id), id, s.staleArg())
	switch {
	case err != nil:
		return m, nil, err
	case rep.code == -1:
		return m, nil, errNoService
	case rep.code == -2:
		return m, nil, errHasInstances
	}
	pl := rep.list()
	ms, _ := pl[0].(string)
	_ = json.Unmarshal([]byte(ms), &m)
	s.jobs.Delete(m.JobName)
	// The job name goes last: until then a deploy of the same job by
	// another id finds the claim and that this record is gone (claimJob).
	if err := swapJobScript.Run(c, s.rdb, []string{s.kJobs()}, m.JobName, id, "").Err(); err != nil {
		return m, nil, redisErr("delete service: job name", err)
	}
	var hints []hint
	if len(pl) > 1 && pl[1] == int64(1) {
		hints = s.linksChanged(c, id)
	}
	return m, hints, nil
}

// instanceChange is what deploying or deleting instances did.
type instanceChange struct {
	JobName  string
	Instance api.Instance // deployed
	Removed  []int        // deleted, in order
	// Changed: a new instance, one moved to another cluster, or removed
	// ones; Notify are the clusters interested in the service.
	Changed bool
	Notify  []api.Cluster
	// Rehost: the clusters hosting the service changed; its links are to
	// be copied to the link graph (rootStore.syncLinks).
	Rehost bool
}

// deployInstance creates instance n of service id in cluster cid, or
// finds it (moved to cid if it was in another cluster): one script on the
// service's shard, plus a block claim when the shard has no address left.
// errNoService, errNoCluster, ipam's.
func (s *rootStore) deployInstance(c context.Context, id string, n int, cid string) (instanceChange, error) {
	if err := s.ready(c); err != nil {
		return instanceChange{}, err
	}
	if ok, err := s.registered(c, cid); err != nil {
		return instanceChange{}, err
	} else if !ok {
		return instanceChange{}, errNoCluster
	}
	k := s.shard(id)
	keys := []string{s.kSvc(id)}
	args := []any{s.pool.Tag(k), s.pool.LuaArg(), id, strconv.Itoa(n), cid, newOwner(instOwnerBase(id, n)), "", ""}
	for try := range maxClaims {
		res, err := s.hot.run(c, deployInstanceScript, keys, args...)
		if err != nil {
			return instanceChange{}, redisErr("deploy instance", err)
		}
		switch code(res) {
		case -1:
			return instanceChange{}, errNoService
		case -3:
			pool := strAt(res, 2)
			have, _ := res[3].(int64)
			list, err := s.pool.Claim(c, k, pool, int(have), try)
			if err != nil {
				return instanceChange{}, fmt.Errorf("deploy instance: allocate instance IPs: %w", err)
			}
			args[6], args[7] = pool, list
			continue
		case -4:
			e, _ := res[1].(int64)
			return instanceChange{}, fmt.Errorf("deploy instance: allocate instance IPs: pool code %d: %w", e, ipam.ErrConflict)
		}
		if err := s.hook("deploy instance: store"); err != nil {
			return instanceChange{}, err
		}
		inst, err := instanceFromFlat(res[3:11])
		if err != nil {
			return instanceChange{}, err
		}
		ch := instanceChange{JobName: strAt(res, 2), Instance: inst, Changed: code(res) == 1, Rehost: res[1] == int64(1)}
		if ch.Changed {
			ch.Notify, err = s.clustersOf(c, stringsOf(res[11:]))
		}
		return ch, err
	}
	return instanceChange{}, fmt.Errorf("deploy instance: blocks claimed by others %d times in a row: %w", maxClaims, errRedis)
}

// maxClaims bounds the block claims of one deploy (other replicas may fill
// a new block before this one uses it).
const maxClaims = 16

// deleteInstances deletes instance n of service id (-1: every instance)
// and frees their instance IPs. The change holds what was removed even
// when a release elsewhere failed (the records are gone: clusters must
// hear of it; the release stays pending). errNoService, errNoInstance.
func (s *rootStore) deleteInstances(c context.Context, id string, n int) (instanceChange, error) {
	if err := s.ready(c); err != nil {
		return instanceChange{}, err
	}
	res, err := deleteInstancesScript.Run(c, s.rdb, []string{s.kSvc(id)}, s.st(id), id, strconv.Itoa(n)).Slice()
	if err != nil {
		return instanceChange{}, redisErr("delete instance", err)
	}
	switch code(res) {
	case -1:
		return instanceChange{}, errNoService
	case -2:
		return instanceChange{}, errNoInstance
	}
	if len(res) < 5 {
		return instanceChange{}, fmt.Errorf("delete instance: script reply of %d values", len(res))
	}
	ch := instanceChange{JobName: strAt(res, 2), Rehost: res[1] == int64(1)}
	nums, _ := res[3].([]any)
	for _, v := range nums {
		k, _ := strconv.Atoi(fmt.Sprint(v))
		ch.Removed = append(ch.Removed, k)
	}
	slices.Sort(ch.Removed)
	ch.Changed = len(ch.Removed) > 0
	if ch.Changed {
		if ch.Notify, err = s.clustersOf(c, stringsOf(res[5:])); err != nil {
			return ch, err
		}
	}
	if err := s.hook("delete instance: records"); err != nil {
		return ch, err
	}
	frees, _ := res[4].([]any)
	if err := s.finish(c, id, frees); err != nil {
		return ch, fmt.Errorf("delete instance: %w", err)
	}
	return ch, nil
}
