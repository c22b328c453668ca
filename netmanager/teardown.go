package netmanager

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
)

// Teardown removes everything a daemon with this configuration set up on
// the node: the veths named in the state file, the gateway link, the nft
// table, the forwarding sysctls (restored), the socket and the state file.
// It refuses while a daemon answers on the socket. dataplane, when set,
// removes what the data plane leaves between daemons (the kernel tier's
// pinned links and flows under pinPath, its punt device).
func Teardown(cfg Config, log *slog.Logger, dataplane func(pinPath string) error) error {
	if socketAnswers(cfg.Socket) {
		return fmt.Errorf("teardown: a netmanager answers on %s: stop it first", cfg.Socket)
	}
	st, lerr := loadState(cfg.StateFile())
	var errs []error
	if lerr != nil {
		errs = append(errs, lerr)
	}
	saved := map[string]string{}
	if st != nil {
		for _, c := range st.Containers {
			if err := detach(c); err != nil {
				errs = append(errs, err)
				continue
			}
			log.Info("removed container interface", "service", c.Job, "instance", c.Instance, "veth", c.HostIf)
		}
		saved = st.Sysctls
	}
	if dataplane != nil {
		node := cfg.NodeID
		if node == "" && st != nil {
			node = st.NodeID
		}
		if err := dataplane(cfg.PinPath(node)); err != nil {
			errs = append(errs, fmt.Errorf("data plane: %w", err))
		}
	}
	if err := teardownNode(saved); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if lerr == nil {
		for _, f := range []string{cfg.StateFile(), cfg.FlowsFile()} {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
