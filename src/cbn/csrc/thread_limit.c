/* thread_limit.c - the most threads a call may start: never more than the machine offers, and
 * one in a forked child.
 *
 * Fork: libgomp keeps its worker threads in a pool owned by the thread that started the team.
 * fork() copies that pool's bookkeeping but not its threads, so a child's first parallel
 * region waits forever for workers that do not exist. cbn's results are bit-identical for any
 * thread count, so a child simply runs every call on one thread (which opens no OpenMP region)
 * and gets the parent's bits. A pthread_atfork child handler, registered the first time a call
 * asks for more than one thread (before cbn can have started a team), marks the child; the flag
 * is inherited by the child's own children.
 *
 * Oversubscription: more threads than CPUs only slow a call down, and each thread's stack costs
 * address space; libgomp exits the process when it cannot create one. Requests are therefore
 * clamped to the larger of omp_get_num_procs() (the CPUs in the affinity mask) and
 * omp_get_max_threads() (OMP_NUM_THREADS), and to omp_get_thread_limit(). */
#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
#define _POSIX_C_SOURCE 200809L
#define CBN_FORK_GUARD 1
#include <pthread.h>
#endif

#include "thread_limit.h"
#include "omp_compat.h"

#ifdef CBN_FORK_GUARD
/* Written once: by the child handler, while the child is single-threaded (before fork()
 * returns in it), or by the failed registration under pthread_once. */
static int cbn_serial_only = 0;
static pthread_once_t cbn_fork_once = PTHREAD_ONCE_INIT;

static void cbn_mark_forked_child(void) { cbn_serial_only = 1; }

static void cbn_register_fork_handler(void)
{
    /* no handler: a fork could not be noticed, so never start a team */
    if (pthread_atfork(NULL, NULL, cbn_mark_forked_child) != 0) cbn_serial_only = 1;
}
#endif

int cbn_thread_limit(int requested)
{
    if (requested <= 1) return 1;
#ifdef CBN_FORK_GUARD
    pthread_once(&cbn_fork_once, cbn_register_fork_handler);
    if (cbn_serial_only) return 1;
#endif
#ifdef _OPENMP
    /* OMP_NUM_THREADS (omp_get_max_threads) above the CPU count is the user's explicit wish to
     * oversubscribe; an n_threads argument alone never is. */
    int offered = omp_get_num_procs();
    const int asked = omp_get_max_threads(), limit = omp_get_thread_limit();
    if (offered < asked) offered = asked;
    if (requested > offered) requested = offered;
    if (requested > limit) requested = limit;
    return requested < 1 ? 1 : requested;
#else
    return 1;                     /* a serial build never starts a thread */
#endif
}
