//go:build !linux

package xsk

// Socket is an AF_XDP socket; on this system every constructor returns
// ErrNotSupported and the methods are inert.
type Socket struct{}

// NewSocket returns ErrNotSupported: AF_XDP exists only on Linux.
func NewSocket(Config) (*Socket, error) { return nil, ErrNotSupported }

// NewSharedSocket returns ErrNotSupported: AF_XDP exists only on Linux.
func NewSharedSocket(*Socket, int, int) (*Socket, error) { return nil, ErrNotSupported }

func (s *Socket) Fd() int                       { return -1 }
func (s *Socket) ZeroCopy() bool                { return false }
func (s *Socket) Config() Config                { return Config{} }
func (s *Socket) FrameSize() int                { return 0 }
func (s *Socket) FrameStart(addr uint64) uint64 { return addr }
func (s *Socket) Frame(uint64) []byte           { return nil }
func (s *Socket) Packet(Desc) []byte            { return nil }
func (s *Socket) AllocFrame() (uint64, bool)    { return 0, false }
func (s *Socket) FreeFrame(uint64)              {}
func (s *Socket) FreeFrames() int               { return 0 }
func (s *Socket) NumFrames() int                { return 0 }
func (s *Socket) Fill([]uint64) int             { return 0 }
func (s *Socket) FillFromFree(int) int          { return 0 }
func (s *Socket) Receive([]Desc) int            { return 0 }
func (s *Socket) RxPending() bool               { return false }
func (s *Socket) Transmit([]Desc) int           { return 0 }
func (s *Socket) Kick()                         {}
func (s *Socket) Complete() int                 { return 0 }
func (s *Socket) TxOutstanding() int            { return 0 }
func (s *Socket) Stats() (Stats, error)         { return Stats{}, ErrNotSupported }
func (s *Socket) Close() error                  { return nil }
