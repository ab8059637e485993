/* dispatch.h - which CPU level the kernels run at (internal: not part of include/cbn.h).
 *
 * The default Python build compiles the kernels once per x86-64 level and chooses one table of
 * kernels at run time (dispatch.c); a single-level build (CBN_NATIVE=1, CBN_PORTABLE=1, other
 * architectures, and embedders who compile the csrc files themselves) runs the kernels its compiler
 * flags gave. Levels (the x86-64 psABI's micro-architecture levels, as -march=x86-64-vN):
 *   "v2"  SSE4.2, POPCNT, CMPXCHG16B, LAHF/SAHF (the baseline; no FMA)
 *   "v3"  v2 + AVX, AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE, with AVX state enabled by the OS
 *   "v4"  v3 + AVX-512 F/BW/VL/DQ/CD, with the AVX-512 state enabled by the OS
 * A single-level build reports CBN_BUILD_LEVEL ("native", "generic"; "fixed" when undefined:
 * the level the embedder's flags chose). */
#ifndef CBN_DISPATCH_H
#define CBN_DISPATCH_H

/* 1 when this CPU and its OS can run level ("v2", "v3", "v4"), else 0 (also for other names
 * and off x86-64). Whatever the build. */
int cbn_cpu_supports_level(const char *level);

/* 1 in the dispatched build (levels chosen at run time), 0 in a single-level build. */
int cbn_cpu_dispatched(void);

/* The level the kernels run at. In the dispatched build the first kernel call (or this) picks
 * the best level the CPU supports, unless cbn_select_cpu_level chose one before. */
const char *cbn_cpu_level(void);

/* Run the kernels at `level` from now on; NULL or "" picks the best level the CPU supports.
 * Call it before the first kernel call (levels without FMA round differently). Returns CBN_OK,
 * or CBN_ERR_ARGUMENT (nothing changes) when the name is unknown, the CPU lacks the level, or
 * a single-level build is asked for a level other than its own. */
int cbn_select_cpu_level(const char *level);

/* The name of the i-th entry point that the dispatched build forwards (kernel_list.h), NULL
 * past the last (also in a single-level build: the list is the same). */
const char *cbn_dispatched_kernel(int i);

#endif
