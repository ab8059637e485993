/* dispatch.c - the public kernels of the dispatched build: one table of kernel pointers per
 * x86-64 level, one of them chosen once from what the CPU supports (or cbn_select_cpu_level),
 * and each public function of include/cbn.h forwarding its arguments through it.
 *
 * setup.py compiles the kernel files (cbn_<type>.c) once per level with -march=x86-64-v<n> and
 * CBN_KERNEL_LEVEL=v<n>, which suffixes every name they define (cbn_infer_f32_v3), and this
 * file with CBN_DISPATCH. Compiled without -march flags: it must run on any x86-64 CPU, to
 * say which levels it has. No ifunc or target_clones (some loaders, musl's, reject them).
 * Without CBN_DISPATCH (single-level builds: embedders compiling the csrc files, CBN_NATIVE=1) the
 * kernel files define the public names themselves and this file only answers the queries of
 * dispatch.h. */
#include <stddef.h>
#include <string.h>
#include "cbn.h"
#include "dispatch.h"
#include "kernel_list.h"

#define CBN_STR_(x) #x
#define CBN_STR(x) CBN_STR_(x)

#define CBN_KERNEL_NAME(name, params, args) CBN_STR(name),
static const char *const kernel_names[] = {CBN_KERNELS(CBN_KERNEL_NAME, CBN_KERNEL_NAME) NULL};
#undef CBN_KERNEL_NAME

const char *cbn_dispatched_kernel(int i)
{
    const int n = (int)(sizeof kernel_names / sizeof kernel_names[0]) - 1;
    return i >= 0 && i < n ? kernel_names[i] : NULL;
}

#ifdef CBN_DISPATCH

#if !defined(__x86_64__) || !(defined(__GNUC__) || defined(__clang__))
#error "the dispatched build is for x86-64 with GCC or clang; build single-level without CBN_DISPATCH"
#endif

#include <stdio.h>
#include <stdlib.h>

#define CBN_MEMBER_INT(name, params, args) int (*name) params;
#define CBN_MEMBER_VOID(name, params, args) void (*name) params;
typedef struct {
    CBN_KERNELS(CBN_MEMBER_INT, CBN_MEMBER_VOID)
} cbn_kernel_table;
#undef CBN_MEMBER_INT
#undef CBN_MEMBER_VOID

#define CBN_TABLE_LEVEL v2
#include "dispatch_table.h"
#undef CBN_TABLE_LEVEL
#define CBN_TABLE_LEVEL v3
#include "dispatch_table.h"
#undef CBN_TABLE_LEVEL
#define CBN_TABLE_LEVEL v4
#include "dispatch_table.h"
#undef CBN_TABLE_LEVEL

/* the levels, lowest first */
static const struct {
    const char *name;
    const cbn_kernel_table *table;
} levels[] = {{"v2", &table_v2}, {"v3", &table_v3}, {"v4", &table_v4}};
enum { N_LEVELS = (int)(sizeof levels / sizeof levels[0]) };

/* The table in use; NULL until chosen. Read and written with atomics: threads that make their
 * first calls together all choose the same best level. */
static const cbn_kernel_table *active = NULL;

static int best_level(void)
{
    for (int i = N_LEVELS - 1; i >= 0; i--)
        if (cbn_cpu_supports_level(levels[i].name)) return i;
    return -1;
}

/* The first call's choice, out of line so that each public function stays a load and a jump. */
__attribute__((noinline)) static const cbn_kernel_table *choose_best(void)
{
    const int i = best_level();
    if (i < 0) {              /* nothing to run: say so rather than die of an illegal instruction */
        fputs("cbn: this CPU lacks x86-64-v2 (SSE4.2, POPCNT), the lowest level cbn's "
              "dispatched build runs; build with CBN_PORTABLE=1\n", stderr);
        abort();
    }
    __atomic_store_n(&active, levels[i].table, __ATOMIC_RELEASE);
    return levels[i].table;
}

static inline const cbn_kernel_table *kernels(void)
{
    const cbn_kernel_table *t = __atomic_load_n(&active, __ATOMIC_ACQUIRE);
    return t ? t : choose_best();
}

int cbn_cpu_dispatched(void) { return 1; }

const char *cbn_cpu_level(void)
{
    const cbn_kernel_table *t = kernels();
    for (int i = 0; i < N_LEVELS; i++)
        if (levels[i].table == t) return levels[i].name;
    return "unknown";         /* not reached */
}

int cbn_select_cpu_level(const char *level)
{
    int i = -1;
    if (!level || !level[0]) {
        i = best_level();
    } else {
        for (int k = 0; k < N_LEVELS; k++)
            if (strcmp(level, levels[k].name) == 0 && cbn_cpu_supports_level(level)) i = k;
    }
    if (i < 0) return CBN_ERR_ARGUMENT;
    __atomic_store_n(&active, levels[i].table, __ATOMIC_RELEASE);
    return CBN_OK;
}

/* the public functions */
#define CBN_FORWARD_INT(name, params, args) \
    int name params { return kernels()->name args; }
#define CBN_FORWARD_VOID(name, params, args) \
    void name params { kernels()->name args; }
CBN_KERNELS(CBN_FORWARD_INT, CBN_FORWARD_VOID)

#else /* a single-level build */

#ifndef CBN_BUILD_LEVEL
#define CBN_BUILD_LEVEL fixed
#endif

int cbn_cpu_dispatched(void) { return 0; }

const char *cbn_cpu_level(void) { return CBN_STR(CBN_BUILD_LEVEL); }

int cbn_select_cpu_level(const char *level)
{
    if (!level || !level[0] || strcmp(level, CBN_STR(CBN_BUILD_LEVEL)) == 0) return CBN_OK;
    return CBN_ERR_ARGUMENT;
}

#endif
