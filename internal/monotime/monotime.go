// Package monotime is the process's one monotonic clock for the data
// path: nanoseconds since the process started, as an int64 the hot paths
// compare and store without a time.Time (fastpath's flow and fragment
// ages, the AF_XDP poller's spin budget). Every reader shares one epoch,
// so their stamps compare. Now does not allocate.
package monotime

import "time"

// epoch is the base of the clock; time.Since reads its monotonic part.
var epoch = time.Now()

// Now returns nanoseconds on the monotonic clock since the process
// started.
func Now() int64 { return int64(time.Since(epoch)) }
