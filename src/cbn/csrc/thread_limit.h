/* thread_limit.h - how many threads a call may really start (see thread_limit.c). */
#ifndef CBN_THREAD_LIMIT_H
#define CBN_THREAD_LIMIT_H

/* requested (>= 1) clamped to the CPUs this process may run on (or OMP_NUM_THREADS when larger)
 * and OpenMP's thread limit;
 * 1 in a process forked after cbn started (or was asked for) a team of threads. */
int cbn_thread_limit(int requested);

#endif
