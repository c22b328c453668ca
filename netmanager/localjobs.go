package netmanager

import "slices"

// LocalJobs returns the jobs with a container attached on this node,
// sorted and deduplicated: what ServiceView.SetLocalJobs wants after a
// deploy, an undeploy or a re-adoption. It takes the daemon's lock, so it
// must not be called while holding it.
func (d *Daemon) LocalJobs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st == nil {
		return nil
	}
	jobs := make([]string, 0, len(d.st.Containers))
	for _, c := range d.st.Containers {
		jobs = append(jobs, c.Job)
	}
	slices.Sort(jobs)
	return slices.Compact(jobs)
}
