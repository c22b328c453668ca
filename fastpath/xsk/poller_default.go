//go:build !linux

package xsk

// Poller implements hybrid polling; on this system NewPoller returns
// ErrNotSupported.
type Poller struct{}

// NewPoller returns ErrNotSupported: it needs eventfd and AF_XDP sockets.
func NewPoller(PollerConfig) (*Poller, error) { return nil, ErrNotSupported }

func (p *Poller) Add(int)                 {}
func (p *Poller) Remove(int)              {}
func (p *Poller) Stats() PollerStats      { return PollerStats{} }
func (p *Poller) Wait(bool) (bool, error) { return false, ErrNotSupported }
func (p *Poller) Notify() error           { return ErrNotSupported }
func (p *Poller) Close() error            { return nil }
