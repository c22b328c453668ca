package control

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher sends the scripts of concurrent requests to Redis together: a
// sender takes one call, then whatever others are already waiting (up to
// maxBatch), and runs them as one pipeline, so many requests share one
// write and one read system call. Nothing waits to fill a batch: an idle
// root sends each call at once, a busy one batches as much as it is
// behind. On Redis Cluster the client splits a pipeline per master.
//
// Measured with BenchmarkControlPlane on the 2-vCPU VM (docs/design.md):
// a system call on the Redis connection cost about as much root CPU as the
// rest of a deploy.
type batcher struct {
	rdb     redis.UniversalClient
	calls   chan *batchCall
	stop    chan struct{} // closed by close: the senders end
	timeout time.Duration
}

// batchCall is one script run; done is closed when res and err are set.
type batchCall struct {
	script *redis.Script
	keys   []string
	args   []any
	res    []any
	err    error
	done   chan struct{}
}

// errClosed: the root was closed while a request waited for Redis.
var errClosed = fmt.Errorf("root closed: %w", errRedis)

const (
	maxBatch = 64
	// batchSenders run pipelines at once: one sends while another's
	// replies come back.
	batchSenders = 4
)

func newBatcher(rdb redis.UniversalClient, timeout time.Duration) *batcher {
	b := &batcher{rdb: rdb, calls: make(chan *batchCall, 4*maxBatch), stop: make(chan struct{}), timeout: timeout}
	for range batchSenders {
		go b.send()
	}
	return b
}

// close ends the senders; calls still queued or sent later fail.
func (b *batcher) close() { close(b.stop) }

// run runs script with keys and args in the next batch and returns its
// array reply. A caller whose context ends stops waiting (the script may
// still run: every hot script is safe to retry).
func (b *batcher) run(ctx context.Context, script *redis.Script, keys []string, args ...any) ([]any, error) {
	c := &batchCall{script: script, keys: keys, args: args, done: make(chan struct{})}
	select {
	case b.calls <- c:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-b.stop:
		return nil, errClosed
	}
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-b.stop:
		return nil, errClosed
	}
}

func (b *batcher) send() {
	batch := make([]*batchCall, 0, maxBatch)
	cmds := make([]*redis.Cmd, 0, maxBatch)
	for {
		var c *batchCall
		select {
		case c = <-b.calls:
		case <-b.stop:
			return
		}
		batch = append(batch[:0], c)
	fill:
		for len(batch) < maxBatch {
			select {
			case more := <-b.calls:
				batch = append(batch, more)
			default:
				break fill
			}
		}
		b.exec(batch, cmds[:0])
	}
}

// exec runs a batch as one pipeline of EVALSHAs; the calls whose script
// Redis does not hold yet run again as EVAL (which loads it).
func (b *batcher) exec(batch []*batchCall, cmds []*redis.Cmd) {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	pipe := b.rdb.Pipeline()
	for _, c := range batch {
		cmds = append(cmds, c.script.EvalSha(ctx, pipe, c.keys, c.args...))
	}
	_, _ = pipe.Exec(ctx)
	var again []int
	for i, c := range batch {
		res, err := cmds[i].Slice()
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			again = append(again, i)
			continue
		}
		c.res, c.err = res, err
		close(c.done)
	}
	if len(again) == 0 {
		return
	}
	pipe = b.rdb.Pipeline()
	for _, i := range again {
		c := batch[i]
		cmds[i] = c.script.Eval(ctx, pipe, c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx)
	for _, i := range again {
		c := batch[i]
		c.res, c.err = cmds[i].Slice()
		close(c.done)
	}
}
