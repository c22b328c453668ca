package deploy

// PID is the process id of the node's running netmanager, or 0 when none
// runs (stopped, or exited).
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil || n.proc.Exited() {
		return 0
	}
	return n.proc.Pid()
}
