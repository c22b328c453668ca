package redisproc

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes cmd's process die with the program that started it,
// even when that program is killed and its cleanup never runs.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
