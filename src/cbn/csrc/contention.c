/* contention.c - calls on a busy machine use one thread.
 *
 * A team waits for its slowest thread. Where another process keeps a CPU busy, a helper thread
 * shares a core with it and the scheduler takes it off that core for milliseconds at a time:
 * the 2-thread training call on 32x64x56x56 took 1.61-1.65x (NCHW) and 1.40-1.96x (NHWC) the
 * time of one thread on an idle machine (AMD Zen 4, 2 CPUs, one spinning process beside it),
 * while one thread beside the same process took 0.95-1.03x. So each helper thread compares the
 * wall time since its team started with the CPU time it got. What it lost beyond a start-up
 * allowance (CBN_CONTENTION_START_US), divided by the team's helper count (so that a team of 16
 * counts as much as a team of 2), is summed over the last CBN_CONTENTION_WINDOW_MS or so (a
 * decaying sum). When that passes CBN_CONTENTION_LOST_PERCENT of the window, the calls of the
 * next CBN_CONTENTION_BACKOFF_MS run on one thread (twice as long, up to 2 s, when the last
 * such spell ended less than two windows before). The first team started after that is a
 * probe: if a helper of it lost more than CBN_CONTENTION_MIN_LOST_US and more than
 * CBN_CONTENTION_LOST_PERCENT of its time, one thread again; if not, teams again. Reports of
 * teams started before the spell ended are ignored. Results are bit-identical for every thread
 * count, so this changes only the time.
 * A single stall does not count: on the idle (virtual) machine this was measured on, a helper
 * lost 1-12 ms every 0.25-0.5 s (bursts of up to 12 ms within 15 ms), beside the spinning
 * process 2-5 ms every 8 ms.
 *
 * cbn_set_contention_fallback(0), or CBN_CONTENTION_FALLBACK=0 in the environment (read at the
 * first call), turns it off: for measurements of thread scaling, or of peak speed beside other
 * processes' transient threads. Without OpenMP there are no teams, and without the POSIX
 * clocks nothing is measured: calls then always may start a team. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "contention.h"

/* 0 turns the fallback off for good (cbn_set_contention_fallback cannot turn it on) */
#ifndef CBN_CONTENTION_BACKOFF_MS
#define CBN_CONTENTION_BACKOFF_MS 250
#endif
#ifndef CBN_CONTENTION_MAX_BACKOFF_MS
#define CBN_CONTENTION_MAX_BACKOFF_MS 2000
#endif
#ifndef CBN_CONTENTION_MIN_LOST_US
#define CBN_CONTENTION_MIN_LOST_US 500
#endif
#ifndef CBN_CONTENTION_START_US
#define CBN_CONTENTION_START_US 50
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

/* Whether the fallback is on (-1: the environment not read yet); any thread may write it, so
 * it is read and written atomically where the compiler offers that. */
static int fallback_on = -1;

#ifdef CBN_MEASURE_CONTENTION
#define LOAD_INT(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_INT(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#else
#define LOAD_INT(p) (*(p))
#define STORE_INT(p, v) (*(p) = (v))
#endif

static int fallback_is_on(void)
{
    int on = LOAD_INT(&fallback_on);
    if (on < 0) {
        const char *v = getenv("CBN_CONTENTION_FALLBACK");
        on = !(v && strcmp(v, "0") == 0) && CBN_CONTENTION_BACKOFF_MS > 0;
        STORE_INT(&fallback_on, on);
    }
    return on;
}

int cbn_set_contention_fallback(int on)
{
    const int was = fallback_is_on();
    STORE_INT(&fallback_on, on != 0 && CBN_CONTENTION_BACKOFF_MS > 0);
    return was;
}

#ifdef CBN_MEASURE_CONTENTION
/* Shared by every thread that calls cbn, each read and written atomically (a lost update only
 * blurs the estimate): monotonic nanoseconds until which calls run on one thread (0: none
 * yet) and the length of that spell; the decayed sum of lost seconds and when it was last
 * updated; whether the next report is a probe. */
static int64_t one_thread_until_ns = 0, spell_ms = 0;
static double lost_sum = 0.0, lost_sum_at = 0.0;
static int next_is_probe = 0;

/* seconds on `clock`, or -1 where it cannot be read (a sandbox may refuse the CPU clock) */
static double seconds(clockid_t clock)
{
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) return -1.0;
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A spell of one thread: CBN_CONTENTION_BACKOFF_MS, or twice the last spell (up to
 * CBN_CONTENTION_MAX_BACKOFF_MS) when the last one ended less than two windows ago. Contention
 * comes in bursts, so a probe team often gets its CPU and teams resume until the loss adds up
 * again: beside a spinning process, 250 ms spells alone left 15-20% of the calls to teams. */
static void one_thread_for_a_while(double now)
{
    const double window = 1e-3 * CBN_CONTENTION_WINDOW_MS;
    const double last_end = 1e-9 * (double)__atomic_load_n(&one_thread_until_ns, __ATOMIC_RELAXED);
    int64_t spell = __atomic_load_n(&spell_ms, __ATOMIC_RELAXED);
    if (last_end > 0.0 && now - last_end < 2.0 * window && spell > 0)
        spell = 2 * spell < CBN_CONTENTION_MAX_BACKOFF_MS ? 2 * spell
                                                          : CBN_CONTENTION_MAX_BACKOFF_MS;
    else
        spell = CBN_CONTENTION_BACKOFF_MS;
    __atomic_store_n(&spell_ms, spell, __ATOMIC_RELAXED);
    __atomic_store_n(&one_thread_until_ns, (int64_t)((now + 1e-3 * (double)spell) * 1e9),
                     __ATOMIC_RELAXED);
    __atomic_store_n(&next_is_probe, 1, __ATOMIC_RELAXED);
}

/* One helper's report: its team started at team_start, it is now `now`, and it got `cpu`
 * seconds of CPU since its share began; its team has n_helpers helpers. */
static void note(double team_start, double now, double cpu, int n_helpers)
{
    const double window = 1e-3 * CBN_CONTENTION_WINDOW_MS, share = 0.01 * CBN_CONTENTION_LOST_PERCENT;
    const double wall = now - team_start;
    const int64_t until = __atomic_load_n(&one_thread_until_ns, __ATOMIC_RELAXED);
    if (team_start * 1e9 < (double)until) return;      /* started before the spell ended */
    double lost = wall - cpu - 1e-6 * CBN_CONTENTION_START_US;
    if (lost < 0.0) lost = 0.0;
    if (__atomic_exchange_n(&next_is_probe, 0, __ATOMIC_RELAXED) &&
        lost > 1e-6 * CBN_CONTENTION_MIN_LOST_US && lost > share * wall) {
        one_thread_for_a_while(now);          /* still busy */
        return;
    }
    double sum, at;
    __atomic_load(&lost_sum, &sum, __ATOMIC_RELAXED);
    __atomic_load(&lost_sum_at, &at, __ATOMIC_RELAXED);
    /* decays to about a third over a window (window / (window + dt)), with no libm */
    sum = sum * (window / (window + (now > at ? now - at : 0.0))) + lost / n_helpers;
    if (sum > share * window) {
        one_thread_for_a_while(now);
        sum = 0.0;
    }
    __atomic_store(&lost_sum, &sum, __ATOMIC_RELAXED);
    __atomic_store(&lost_sum_at, &now, __ATOMIC_RELAXED);
}

double cbn_team_start(void) { return fallback_is_on() ? seconds(CLOCK_MONOTONIC) : -1.0; }

double cbn_thread_cpu(void) { return seconds(CLOCK_THREAD_CPUTIME_ID); }

void cbn_helper_finished(double team_start, double cpu_start, int n_helpers)
{
    const double now = seconds(CLOCK_MONOTONIC), cpu = cbn_thread_cpu();
    if (team_start < 0.0 || cpu_start < 0.0 || now < 0.0 || cpu < 0.0 || n_helpers < 1) return;
    note(team_start, now, cpu - cpu_start, n_helpers);
}

void cbn_contention_note(double wall, double cpu, int n_helpers)
{
    const double now = seconds(CLOCK_MONOTONIC);
    if (now >= 0.0 && n_helpers >= 1) note(now - wall, now, cpu, n_helpers);
}

int cbn_contended(void)
{
    if (!fallback_is_on()) return 0;
    const int64_t until = __atomic_load_n(&one_thread_until_ns, __ATOMIC_RELAXED);
    return until != 0 && seconds(CLOCK_MONOTONIC) * 1e9 < (double)until;
}
#else
double cbn_team_start(void) { return -1.0; }
double cbn_thread_cpu(void) { return -1.0; }
void cbn_helper_finished(double team_start, double cpu_start, int n_helpers)
{
    (void)team_start;
    (void)cpu_start;
    (void)n_helpers;
}
void cbn_contention_note(double wall, double cpu, int n_helpers)
{
    (void)wall;
    (void)cpu;
    (void)n_helpers;
}
int cbn_contended(void) { return 0; }
#endif
