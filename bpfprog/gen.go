package bpfprog

// The steering programs are compiled from c/steer.c; the output (steer_bpfel.go,
// steer_bpfel.o) is committed. Regenerate with `make generate` (go generate
// ./bpfprog/); CI regenerates and fails on any difference. c/include holds
// architecture-neutral asm/ shims so the build needs no host triple path.
// -type exports the structs and enums shared with Go (STYLE.md item 10);
// enum steer_reason and enum xdp_action come along with the .rodata
// variables that use them (bpf2go exports a variable's type by itself and
// refuses a -type for it). The build is reproducible: same clang (14) →
// byte-identical steer_bpfel.o, whatever the checkout path.
//
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -Ic/include" -target bpfel -output-stem steer -type steer_family -type steer_services -type steer_node -type steer_peer_key -type steer_peer -type steer_prefix4 -type steer_prefix6 -type steer_port -type steer_endpoint bpf c/steer.c
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -Ic/include" -target bpfel -output-stem tier -type tier_key -type tier_slot -type tier_cfg kt c/tier.c
