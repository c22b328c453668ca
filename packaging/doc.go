// Package packaging is how Oakwire goes onto a machine; it holds no Go code
// but its tests. manifest lists every installed file once; install.sh reads
// it for `make install` and `make uninstall`, and deb.sh stages the
// oakwire-node and oakwire-control packages with it for `make deb`; the
// systemd units and token files it names live in configs/.
//
// The tests install into a scratch DESTDIR and check the tree, the modes,
// the binaries' --version and the units (systemd-analyze verify and
// security), and that uninstall leaves the tree empty; they build the .deb
// files and read them back with dpkg-deb. Installing a package with dpkg -i
// changes the machine, so that test runs only under CI=true (a throwaway
// machine) or with OAKWIRE_TEST_DPKG=1.
package packaging
