# One entry per habit (STYLE.md item 15). Every target installs what it needs
# through `deps`, which only acts when something is missing.
SHELL   := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO      ?= go
FUZZTIME ?= 10s
# Packages whose tests also run under the race detector.
RACE_PKGS := ./fastpath/... ./ipam/... ./control/... ./netmanager/... ./dataplane/...

.PHONY: deps build binaries install uninstall deb demo test test-unit test-race fuzz lint generate check-generate bench bench-smoke

# Versions: `git describe` of the checkout (scripts/version.sh), linked into
# every binary (internal/version); empty outside git, where the binaries
# read their build info instead.
ifndef VERSION
VERSION := $(shell bash scripts/version.sh)
endif
ifndef COMMIT
COMMIT := $(shell git rev-parse HEAD 2>/dev/null)
endif
LDFLAGS := -X github.com/oakwire/oakwire/internal/version.version=$(VERSION) \
           -X github.com/oakwire/oakwire/internal/version.commit=$(COMMIT)
# Static (no libc to depend on), no build paths in the binary.
GOBUILD  = CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'
# Where the binaries are built, and where install and deb take them from.
BIN     ?= bin
# make install: DESTDIR (staging root) and PREFIX; configuration always goes
# to /etc/oakwire, the units name it.
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
# make deb: where the .deb files go.
DEBDIR  ?= dist

deps:
	@bash scripts/deps.sh

## build: every package, and the binaries into bin/ (servicemanager,
## netmanager, netbench, owload), versioned.
build: deps
	$(GO) build ./...
	$(GOBUILD) -o $(BIN)/ ./cmd/...

## binaries: the two that are installed (servicemanager, netmanager).
binaries:
	$(GOBUILD) -o $(BIN)/ ./cmd/servicemanager ./cmd/netmanager

## install: the binaries, a systemd unit per role (oakwire-netmanager,
## oakwire-root, oakwire-cluster), example configs and token files into
## /etc/oakwire (never over existing ones); packaging/manifest lists them.
## uninstall removes them again, keeping configs the operator changed.
install: binaries
	@DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' BINDIR='$(BINDIR)' UNITDIR='$(UNITDIR)' BIN='$(BIN)' \
		bash packaging/install.sh install

uninstall:
	@DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' BINDIR='$(BINDIR)' UNITDIR='$(UNITDIR)' BIN='$(BIN)' \
		bash packaging/install.sh uninstall

## deb: oakwire-node and oakwire-control .deb packages into dist/ (dpkg-deb).
deb: binaries
	@VERSION='$(VERSION)' BIN='$(BIN)' DEBDIR='$(DEBDIR)' bash packaging/deb.sh

## demo: the main job. Three emulated nodes in network namespaces, real
## redis-server, root and cluster service managers and netmanagers; a service
## with instances on two nodes reached through its service IPs. Cleans up.
demo: deps
	$(GO) run ./cmd/netbench demo

## test: every test, privileged ones included (needs root), real redis-server,
## the race detector on the concurrent packages, and each fuzz target briefly.
## The plain pass runs last, so go test's own summary lines close the log.
test: deps lint check-generate fuzz test-race test-unit

# The tag policytest adds a test-only balancing policy (policy/testpolicy.go):
# the tests that prove a policy is one file plus one line build with it.
# -p 1: one test binary at a time. The traffic tests assert zero loss and the
# load tests assert no 503s; on two CPUs, binaries running side by side would
# measure each other instead.
test-unit:
	$(GO) test -count=1 -p 1 -tags policytest ./policy/ ./fastpath/ ./control/policytest/
	$(GO) test -count=1 -p 1 -timeout 30m ./...

test-race:
	$(GO) test -count=1 -p 1 -race -timeout 30m $(RACE_PKGS)

fuzz:
	@FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags policytest ./policy/ ./fastpath/ ./control/policytest/
	$(GO) tool staticcheck ./...

## generate: rebuild the BPF objects with clang through bpf2go (output committed).
generate: deps
	$(GO) generate ./bpfprog/

## check-generate: fail when the committed bpf2go output is stale.
check-generate: generate
	@git diff --exit-code --stat -- bpfprog/ || { echo "bpfprog: committed bpf2go output is stale; run make generate and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- bpfprog/)" || { git status --porcelain -- bpfprog/; echo "bpfprog: generated files not committed"; exit 1; }

## bench: the perf suite (SPEC 9): routed, kernel overlay and oakwire side by
## side, micro and control-plane numbers; report in results/latest/.
bench: deps
	$(GO) run ./cmd/netbench bench --out results

## bench-smoke: the same suite, short (one round, short runs); CI runs it.
bench-smoke: deps
	$(GO) run ./cmd/netbench bench --smoke --out results
