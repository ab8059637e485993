/* contention.h - calls on a busy machine (see contention.c): a team whose helper thread got too
 * little of the CPU makes the calls that follow, for a while, run on one thread. */
#ifndef CBN_CONTENTION_H
#define CBN_CONTENTION_H

/* Teams of calls with fewer values do not measure: a helper's CPU clock costs about 0.5 us
 * (a system call in a virtual machine), 5% of an 8x64x8x8 call. Their calls still fall back. */
#define CBN_CONTENTION_MIN_VALUES (1 << 18)

/* Monotonic wall-clock seconds when the calling thread starts a team; negative when nothing is
 * to be measured (the fallback is off, or there is no clock). */
double cbn_team_start(void);
/* CPU seconds of the calling thread (negative where the clock cannot be read): when a helper
 * thread starts its share of the team's work. */
double cbn_thread_cpu(void);
/* At the end of a helper thread's share: notes how much of its CPU it lost. n_helpers: the
 * team's threads but the one that started it. */
void cbn_helper_finished(double team_start, double cpu_start, int n_helpers);
/* The rule on a report made up by the tests: a helper of a team of n_helpers helpers, which
 * started `wall` seconds ago, got `cpu` seconds of CPU. */
void cbn_contention_note(double wall, double cpu, int n_helpers);
/* Whether a call should now run on one thread (1), or may start a team (0). Always 0 while the
 * fallback is off. */
int cbn_contended(void);
/* Turns the fallback on (1) or off (0) for every later call; returns whether it was on. Until
 * it is set, it is on unless the environment variable CBN_CONTENTION_FALLBACK is "0". */
int cbn_set_contention_fallback(int on);

#endif
