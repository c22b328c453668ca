/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Architecture-neutral shim: the BPF target has no asm/ directory of its
 * own, and /usr/include/<triple>/asm is host-specific. The UAPI headers we
 * use (linux/bpf.h) only need the generic definitions. */
#include <asm-generic/bitsperlong.h>
