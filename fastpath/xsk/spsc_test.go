package xsk

import (
	"errors"
	"runtime"
	"sync"
	"testing"
	"unsafe"
)

func TestSPSCLayout(t *testing.T) {
	var r SPSC
	tail := unsafe.Offsetof(r.tail)
	head := unsafe.Offsetof(r.head)
	if tail < cacheLine-1 || head-tail < cacheLine || unsafe.Sizeof(r)-head < cacheLine {
		t.Fatalf("indexes share cache lines: tail@%d head@%d size %d", tail, head, unsafe.Sizeof(r))
	}
}

func TestSPSCCapacity(t *testing.T) {
	for _, c := range []int{0, 3, 100, -4} {
		if _, err := NewSPSC(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewSPSC(%d) err = %v, want ErrInvalidConfig", c, err)
		}
	}
	r, err := NewSPSC(8)
	if err != nil {
		t.Fatal(err)
	}
	in := make([]Desc, 10)
	for i := range in {
		in[i] = Desc{Addr: uint64(i), Len: uint32(i)}
	}
	if n := r.Enqueue(in); n != 8 {
		t.Fatalf("Enqueue 10 into 8: %d", n)
	}
	if r.Len() != 8 || r.Enqueue(in[:1]) != 0 {
		t.Fatalf("full ring: Len %d", r.Len())
	}
	out := make([]Desc, 3)
	if n := r.Dequeue(out); n != 3 || out[2].Addr != 2 {
		t.Fatalf("Dequeue: %d %v", n, out)
	}
	if n := r.Enqueue(in[8:]); n != 2 {
		t.Fatalf("Enqueue after dequeue: %d", n)
	}
	got := make([]Desc, 16)
	n := r.Dequeue(got)
	if n != 7 {
		t.Fatalf("drain: %d", n)
	}
	for i, d := range got[:n] {
		if want := uint64(i + 3); d.Addr != want {
			t.Fatalf("order: got[%d]=%d want %d", i, d.Addr, want)
		}
	}
	if r.Dequeue(got) != 0 || r.Len() != 0 {
		t.Fatal("empty ring returned descriptors")
	}
}

// TestSPSCConcurrent moves a sequence through the ring with a producer and a
// consumer goroutine and checks order and completeness (run with -race).
func TestSPSCConcurrent(t *testing.T) {
	const total = 200_000
	r, _ := NewSPSC(256)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		batch := make([]Desc, 37)
		next := uint64(0)
		for next < total {
			k := min(uint64(len(batch)), total-next)
			for i := range k {
				batch[i] = Desc{Addr: next + i, Len: uint32(next + i)}
			}
			n := r.Enqueue(batch[:k])
			next += uint64(n)
		}
	}()
	out := make([]Desc, 64)
	want := uint64(0)
	for want < total {
		n := r.Dequeue(out)
		for _, d := range out[:n] {
			if d.Addr != want || d.Len != uint32(want) {
				t.Fatalf("got %v, want addr %d", d, want)
			}
			want++
		}
	}
	wg.Wait()
}

func TestSPSCAllocs(t *testing.T) {
	r, _ := NewSPSC(128)
	in := make([]Desc, 64)
	out := make([]Desc, 64)
	if a := testing.AllocsPerRun(1000, func() {
		r.Enqueue(in)
		r.Dequeue(out)
	}); a != 0 {
		t.Fatalf("%v allocs per enqueue+dequeue", a)
	}
}

func BenchmarkSPSC(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run(map[int]string{1: "batch=1", 64: "batch=64"}[batch], func(b *testing.B) {
			r, _ := NewSPSC(1024)
			in := make([]Desc, batch)
			out := make([]Desc, batch)
			b.ReportAllocs()
			for b.Loop() {
				r.Enqueue(in)
				r.Dequeue(out)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/desc")
		})
	}
}

// BenchmarkSPSCCrossCore runs producer and consumer on two goroutines, so the
// index cache lines move between CPUs as in production.
func BenchmarkSPSCCrossCore(b *testing.B) {
	r, _ := NewSPSC(1024)
	total := uint64(b.N) * 64
	b.ReportAllocs()
	b.ResetTimer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		out := make([]Desc, 64)
		for got := uint64(0); got < total; {
			n := r.Dequeue(out)
			if n == 0 {
				runtime.Gosched()
			}
			got += uint64(n)
		}
	}()
	in := make([]Desc, 64)
	for sent := uint64(0); sent < total; {
		n := r.Enqueue(in[:min(64, total-sent)])
		if n == 0 {
			runtime.Gosched()
		}
		sent += uint64(n)
	}
	<-done
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(total), "ns/desc")
}
