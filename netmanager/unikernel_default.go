//go:build !linux

package netmanager

func createNetns(string) (string, bool, error) { return "", false, ErrNotSupported }
func deleteNetns(string) error                 { return ErrNotSupported }
func setupVMNet(string, string, string) error  { return ErrNotSupported }
