/* contention.c - calls on a busy machine use one thread.
 *
 * A team waits for its slowest thread. Where another process keeps a CPU busy, a helper thread
 * shares a core with it and the scheduler takes it off that core for milliseconds at a time:
 * the 2-thread training call on 32x64x56x56 took 1.61-1.65x (NCHW) and 1.40-1.96x (NHWC) the
 * time of one thread on an idle machine (AMD Zen 4, 2 CPUs, one spinning process beside it),
 * while one thread beside the same process took 0.95-1.03x. So each helper thread compares the
 * wall time since its team started with the CPU time it got, and the time lost is summed over
 * the last CBN_CONTENTION_WINDOW_MS or so (an exponentially decaying sum). When that passes
 * CBN_CONTENTION_LOST_PERCENT of the window, the calls of the next CBN_CONTENTION_BACKOFF_MS
 * run on one thread. The first team after that is a probe: if its helper lost more than
 * CBN_CONTENTION_MIN_LOST_US and more than CBN_CONTENTION_LOST_PERCENT of its time, one thread
 * again; if not, teams again. Results are bit-identical for every thread count, so this changes
 * only the time.
 * A single stall does not count: on the idle (virtual) machine this was measured on, a helper
 * lost 1-12 ms every 0.25-0.5 s (bursts of up to 12 ms within 15 ms), beside the spinning
 * process 2-5 ms every 8 ms.
 *
 * cbn_set_contention_fallback(0), or CBN_CONTENTION_FALLBACK=0 in the environment (read at the
 * first call), turns it off: for measurements of thread scaling, or of peak speed beside other
 * processes' transient threads. Without OpenMP there are no teams, and without the POSIX
 * clocks nothing is measured: calls then always may start a team. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "contention.h"

#ifndef CBN_CONTENTION_BACKOFF_MS
#define CBN_CONTENTION_BACKOFF_MS 250
#endif
#ifndef CBN_CONTENTION_MIN_LOST_US
#define CBN_CONTENTION_MIN_LOST_US 500
#endif
#ifndef CBN_CONTENTION_LOST_PERCENT
#define CBN_CONTENTION_LOST_PERCENT 20
#endif
#ifndef CBN_CONTENTION_WINDOW_MS
#define CBN_CONTENTION_WINDOW_MS 100
#endif

#if defined(__GNUC__) && defined(CLOCK_MONOTONIC) && defined(CLOCK_THREAD_CPUTIME_ID)
#define CBN_MEASURE_CONTENTION 1
#endif

#ifdef CBN_MEASURE_CONTENTION
/* Shared by every thread that calls cbn, each read and written atomically (a lost update only
 * blurs the estimate): monotonic nanoseconds until which calls run on one thread (0: none
 * yet); the decayed sum of lost seconds and when it was last updated; whether the next report
 * is a probe; whether the fallback is on (-1: the environment not read yet). */
static int64_t one_thread_until_ns = 0;
static double lost_sum = 0.0, lost_sum_at = 0.0;
static int next_is_probe = 0;
static int fallback_on = -1;

static double seconds(clockid_t clock)
{
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) return 0.0;
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void one_thread_for_a_while(double now)
{
    const double until = now + 1e-3 * CBN_CONTENTION_BACKOFF_MS;
    __atomic_store_n(&one_thread_until_ns, (int64_t)(until * 1e9), __ATOMIC_RELAXED);
    __atomic_store_n(&next_is_probe, 1, __ATOMIC_RELAXED);
}

double cbn_team_start(void) { return seconds(CLOCK_MONOTONIC); }

double cbn_thread_cpu(void) { return seconds(CLOCK_THREAD_CPUTIME_ID); }

void cbn_contention_note(double wall, double cpu)
{
    const double now = seconds(CLOCK_MONOTONIC), window = 1e-3 * CBN_CONTENTION_WINDOW_MS;
    const double lost = wall > cpu ? wall - cpu : 0.0, share = 0.01 * CBN_CONTENTION_LOST_PERCENT;
    if (__atomic_exchange_n(&next_is_probe, 0, __ATOMIC_RELAXED) &&
        lost > 1e-6 * CBN_CONTENTION_MIN_LOST_US && lost > share * wall) {
        one_thread_for_a_while(now);          /* still busy */
        return;
    }
    double sum, at;
    __atomic_load(&lost_sum, &sum, __ATOMIC_RELAXED);
    __atomic_load(&lost_sum_at, &at, __ATOMIC_RELAXED);
    sum = sum * exp(-(now - at) / window) + lost;
    if (sum > share * window) {
        one_thread_for_a_while(now);
        sum = 0.0;
    }
    __atomic_store(&lost_sum, &sum, __ATOMIC_RELAXED);
    __atomic_store(&lost_sum_at, &now, __ATOMIC_RELAXED);
}

void cbn_helper_finished(double team_start, double cpu_start)
{
    const double wall = seconds(CLOCK_MONOTONIC) - team_start;
    cbn_contention_note(wall, cbn_thread_cpu() - cpu_start);
}

static int fallback_is_on(void)
{
    int on = __atomic_load_n(&fallback_on, __ATOMIC_RELAXED);
    if (on < 0) {
        const char *v = getenv("CBN_CONTENTION_FALLBACK");
        on = !(v && strcmp(v, "0") == 0) && CBN_CONTENTION_BACKOFF_MS > 0;
        __atomic_store_n(&fallback_on, on, __ATOMIC_RELAXED);
    }
    return on;
}

int cbn_set_contention_fallback(int on)
{
    const int was = fallback_is_on();
    __atomic_store_n(&fallback_on, on != 0 && CBN_CONTENTION_BACKOFF_MS > 0, __ATOMIC_RELAXED);
    return was;
}

int cbn_contended(void)
{
    if (!fallback_is_on()) return 0;
    const int64_t until = __atomic_load_n(&one_thread_until_ns, __ATOMIC_RELAXED);
    return until != 0 && seconds(CLOCK_MONOTONIC) * 1e9 < (double)until;
}
#else
double cbn_team_start(void) { return 0.0; }
double cbn_thread_cpu(void) { return 0.0; }
void cbn_contention_note(double wall, double cpu)
{
    (void)wall;
    (void)cpu;
}
void cbn_helper_finished(double team_start, double cpu_start)
{
    (void)team_start;
    (void)cpu_start;
}
int cbn_contended(void) { return 0; }
int cbn_set_contention_fallback(int on)
{
    (void)on;
    return 0;                     /* nothing measured: never on */
}
#endif
