package bpfprog

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// Every .o file of the package is hashed, with the bytes on disk.
func TestObjectHashes(t *testing.T) {
	files, err := filepath.Glob("*.o")
	if err != nil || len(files) == 0 {
		t.Fatalf("no BPF objects in the package directory: %v", err)
	}
	got := ObjectHashes()
	if len(got) != len(files) {
		t.Errorf("ObjectHashes has %d objects %v, the directory %d %v", len(got), got, len(files), files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if want := hex.EncodeToString(sum[:]); got[f] != want {
			t.Errorf("ObjectHashes[%q] = %q, want %q", f, got[f], want)
		}
	}
	if _, ok := got["steer_bpfel.o"]; !ok {
		t.Errorf("ObjectHashes lacks steer_bpfel.o: %v", got)
	}
}
