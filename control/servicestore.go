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

// The store's operations on services and instances: each spans root's
// records and the address pool, two-phase (pending.go).

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
func (s *rootStore) deployService(c context.Context, id, job string, want []policyIPs) (serviceMeta, bool, error) {
	// Prepare: conflicts are found before anything is allocated, and an
	// intent names the owners the allocation is for.
	args := []any{id, job, s.staleArg()}
	for _, w := range want {
		args = append(args, w.Policy.String(), newOwner(svcOwnerBase(id, w.Policy.String())))
	}
	keys := []string{s.kSvc(id), s.kJobs(), s.kPend(id), s.kPending()}
	rep, err := s.step(c, prepareServiceScript, id, "deploy service: prepare", keys, args...)
	if err := serviceReply(rep, err); err != nil || rep.code == 0 {
		return metaOf(rep, err)
	}
	ownerList := rep.list()
	if len(ownerList) != len(want) {
		return serviceMeta{}, false, fmt.Errorf("deploy service: prepare: %d owners for %d policies", len(ownerList), len(want))
	}
	reqs := make([]ipam.Request, len(want))
	slots, owners := make([]string, len(want)), make([]string, len(want))
	for i, w := range want {
		owners[i], _ = ownerList[i].(string)
		slots[i] = "p:" + w.Policy.String()
		reqs[i] = ipam.Request{Owner: owners[i], Kind: ipam.Kind(w.Policy), Custom4: w.Custom4, Custom6: w.Custom6}
	}
	pairs, err := s.alloc.Alloc(c, reqs)
	if err != nil {
		err = nameCustom(err, reqs, want)
		return serviceMeta{}, false, s.afterAllocErr(c, id, slots, owners, fmt.Errorf("deploy service: allocate service IPs: %w", err))
	}
	meta := serviceMeta{ID: id, JobName: job, Owners: map[string]string{}}
	args = []any{id, job, nil}
	for i, w := range want {
		name := w.Policy.String()
		meta.ServiceIPList = append(meta.ServiceIPList, api.ServiceIP{IpType: name, Address: pairs[i].V4, AddressV6: pairs[i].V6})
		meta.Owners[name] = owners[i]
		args = append(args, name, owners[i])
	}
	args[2], _ = json.Marshal(meta)
	// A failure here leaves the intent: a retry gets the same addresses, the
	// sweep frees them if none comes.
	rep, err = s.step(c, commitServiceScript, id, "deploy service: store", keys, args...)
	if err := serviceReply(rep, err); err != nil || rep.code == 0 {
		return metaOf(rep, err)
	}
	return meta, false, nil
}

// serviceReply is the error of a prepare or commit of a service.
func serviceReply(rep reply, err error) error {
	switch {
	case err != nil:
		return err
	case rep.code == -2:
		return &takenError{Holder: rep.str()}
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
// fail as taken: ipam's error starts "alloc <owner> v4|v6: ".
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
func (s *rootStore) deleteService(c context.Context, id string) (serviceMeta, error) {
	// step also finishes what an earlier, half-finished attempt left (its
	// retry lands here as -1).
	rep, err := s.step(c, deleteServiceScript, id, "delete service",
		[]string{s.kSvc(id), s.kJobs(), s.kInt(id), s.kPend(id), s.kPending()}, id, s.tag+"cint:", s.staleArg())
	var m serviceMeta
	switch {
	case err != nil:
		return m, err
	case rep.code == -1:
		return m, errNoService
	case rep.code == -2:
		return m, errHasInstances
	}
	_ = json.Unmarshal([]byte(rep.str()), &m)
	return m, nil
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
	// Rehost: the clusters hosting the service changed (rehostScript).
	Rehost bool
}

// deployInstance creates instance n of service id in cluster cid, or
// finds it (moved to cid if it was in another cluster). errNoService,
// errNoCluster, errReclaimed, ipam's.
func (s *rootStore) deployInstance(c context.Context, id string, n int, cid string) (instanceChange, error) {
	field := "i:" + strconv.Itoa(n)
	keys := s.instanceKeys(id)
	rep, err := s.step(c, prepareInstanceScript, id, "deploy instance: prepare", keys,
		id, field, cid, newOwner(instOwnerBase(id, n)), s.staleArg())
	switch {
	case err != nil:
		return instanceChange{}, err
	case rep.code == -1:
		return instanceChange{}, errNoService
	case rep.code == -2:
		return instanceChange{}, errNoCluster
	case rep.code == 0 || rep.code == 1:
		return instanceOf(rep)
	}
	owner := rep.str()
	pairs, err := s.alloc.Alloc(c, []ipam.Request{{Owner: owner, Kind: ipam.KindInstance}})
	if err != nil {
		return instanceChange{}, s.afterAllocErr(c, id, []string{field}, []string{owner},
			fmt.Errorf("deploy instance: allocate instance IPs: %w", err))
	}
	ib, _ := json.Marshal(storedInstance{Owner: owner, Instance: api.Instance{InstanceNumber: n,
		InstanceIP: pairs[0].V4, InstanceIPv6: pairs[0].V6, ClusterID: cid}})
	// A failure here leaves the intent: a retry gets the same addresses, the
	// sweep frees them if none comes.
	rep, err = s.step(c, commitInstanceScript, id, "deploy instance: store", keys, id, field, owner, ib, cid)
	switch {
	case err != nil:
		return instanceChange{}, err
	case rep.code == -1:
		return instanceChange{}, errNoService
	case rep.code == -3:
		return instanceChange{}, fmt.Errorf("deploy instance: %w", errReclaimed)
	}
	return instanceOf(rep)
}

// instanceOf reads a deploy's reply: code 1 if it changed anything,
// payload {instance JSON, meta JSON, hosting changed}.
func instanceOf(rep reply) (instanceChange, error) {
	pl := rep.list()
	if len(pl) < 2 {
		return instanceChange{}, fmt.Errorf("deploy instance: script payload of %d values", len(pl))
	}
	is, _ := pl[0].(string)
	ms, _ := pl[1].(string)
	var ch instanceChange
	if err := json.Unmarshal([]byte(is), &ch.Instance); err != nil {
		return ch, fmt.Errorf("deploy instance: stored instance: %w", err)
	}
	var m serviceMeta
	_ = json.Unmarshal([]byte(ms), &m)
	ch.JobName, ch.Changed, ch.Notify = m.JobName, rep.code == 1, clustersOf(rep.rest)
	ch.Rehost = len(pl) > 2 && pl[2] == int64(1)
	return ch, nil
}

// deleteInstances deletes instance n of service id (-1: every instance)
// and frees their instance IPs. The change holds what was removed even
// when the release failed (the records are gone: clusters must hear of
// it; the release stays pending). errNoService, errNoInstance.
func (s *rootStore) deleteInstances(c context.Context, id string, n int) (instanceChange, error) {
	res, err := deleteInstancesScript.Run(c, s.rdb, s.instanceKeys(id), id, strconv.Itoa(n), s.staleArg()).Slice()
	if err != nil {
		return instanceChange{}, redisErr("delete instance", err)
	}
	if len(res) < 3 {
		return instanceChange{}, fmt.Errorf("delete instance: script reply of %d values", len(res))
	}
	var ch instanceChange
	if code(res) == 1 {
		pl, _ := res[1].([]any)
		if len(pl) < 2 {
			return ch, fmt.Errorf("delete instance: script payload of %d values", len(pl))
		}
		ms, _ := pl[0].(string)
		var m serviceMeta
		_ = json.Unmarshal([]byte(ms), &m)
		nums, _ := pl[1].([]any)
		for _, v := range nums {
			s, _ := v.(string)
			k, _ := strconv.Atoi(s)
			ch.Removed = append(ch.Removed, k)
		}
		slices.Sort(ch.Removed)
		ch.JobName, ch.Changed, ch.Notify = m.JobName, len(ch.Removed) > 0, clustersOf(res[3:])
		ch.Rehost = len(pl) > 2 && pl[2] == int64(1)
	}
	// The removed instances' addresses, and whatever an earlier attempt
	// failed to free (its retry finds nothing left to remove).
	frees, _ := res[2].([]any)
	if err := s.finish(c, id, frees); err != nil {
		return ch, fmt.Errorf("delete instance: %w", err)
	}
	switch code(res) {
	case -1:
		return ch, errNoService
	case -2:
		return ch, errNoInstance
	}
	return ch, nil
}
