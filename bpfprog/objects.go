package bpfprog

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
)

// objects is every BPF object of this package as compiled into the binary:
// the same files bpf2go's loaders embed (steer_bpfel.o), taken by pattern so
// that an object added later is covered without a change here.
//
//go:embed *.o
var objects embed.FS

// ObjectHashes returns the hex SHA-256 of every embedded BPF object, by file
// name ("steer_bpfel.o"). netmanager reports them in --version, /status and
// /metrics, so a running node says which programs it loads.
func ObjectHashes() map[string]string {
	names, err := fs.Glob(objects, "*.o")
	if err != nil {
		panic("bpfprog: embedded objects: " + err.Error()) // the pattern is constant
	}
	m := make(map[string]string, len(names))
	for _, name := range names {
		b, err := objects.ReadFile(name)
		if err != nil {
			panic("bpfprog: embedded objects: " + err.Error()) // embedded: cannot fail
		}
		sum := sha256.Sum256(b)
		m[name] = hex.EncodeToString(sum[:])
	}
	return m
}
