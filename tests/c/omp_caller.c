/* omp_caller.c - cbn's kernels called from inside the caller's own OpenMP parallel region.
 *
 * An embedding framework may run cbn per sample or per layer from its worker threads. Each call
 * must then behave like a serial call: the same bits, and no synchronization with the caller's
 * team (a barrier of cbn's that bound to the caller's team would hang when only some of the
 * caller's threads are inside cbn). Exit status 0: every result matched the serial call. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "cbn.h"

#define TEAM 4

typedef struct { int64_t N, C, S; cbn_layout layout; } shape;

/* the three kernels on x, dy into out (y, dx, y_infer, then per-channel outputs), n_threads */
static int run_all(const shape *s, const float *x, const float *dy, float *out, int n_threads)
{
    const int64_t n = s->N * s->C * s->S, C = s->C;
    float *y = out, *dx = out + n, *yi = out + 2 * n, *mean = out + 3 * n,
          *invstd = mean + C, *rm = invstd + C, *rv = rm + C, *dw = rv + C, *db = dw + C;
    for (int64_t c = 0; c < C; c++) rm[c] = 0.0f, rv[c] = 1.0f;
    int rc = cbn_train_forward_f32(x, y, s->N, s->C, s->S, s->layout, NULL, NULL, rm, rv, 0.1,
                                   1e-5, 1, mean, invstd, CBN_ACTIVATION_NONE, n_threads);
    rc |= cbn_backward_f32(dy, x, mean, invstd, NULL, NULL, CBN_ACTIVATION_NONE, dx, dw, db,
                           s->N, s->C, s->S, s->layout, n_threads);
    rc |= cbn_infer_f32(x, yi, s->N, s->C, s->S, s->layout, rm, rv, NULL, NULL, 1e-5,
                        CBN_ACTIVATION_NONE, n_threads);
    return rc;
}

int main(void)
{
    /* channels-first long runs, short runs (columns), channels-last narrow and wide. Channel 1's
     * first value lies far from the rest, and where a channel has more than 2^16 values (the
     * first and third shapes) that makes its one-pass float sums cancel: it is summed again
     * around its mean (the kernels' second pass). */
    const shape shapes[] = {{8, 3, 10000, CBN_CHANNELS_FIRST}, {16, 40, 49, CBN_CHANNELS_FIRST},
                            {70000, 24, 1, CBN_CHANNELS_LAST}, {300, 700, 1, CBN_CHANNELS_LAST}};
    int failures = 0;
    omp_set_dynamic(0);
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const shape *s = &shapes[k];
        const int64_t n = s->N * s->C * s->S, n_out = 3 * n + 6 * s->C;
        float *x = malloc(sizeof(float) * n), *dy = malloc(sizeof(float) * n);
        float *ref = malloc(sizeof(float) * n_out);
        float *outs = malloc(sizeof(float) * n_out * TEAM);
        uint32_t state = 12345u + (uint32_t)k;
        for (int64_t i = 0; i < n; i++) {
            state = state * 1664525u + 1013904223u;
            x[i] = (float)(state >> 8) / 16777216.0f;
            dy[i] = (float)((state >> 4) & 0xffff) / 65536.0f - 0.5f;
        }
        x[s->layout == CBN_CHANNELS_FIRST ? s->S : 1] = 1.0e6f;     /* channel 1's first value */
        if (run_all(s, x, dy, ref, 1)) return 2;

        /* every thread of the caller's team at once, each with its own outputs */
        int rc = 0;
#pragma omp parallel num_threads(TEAM) reduction(| : rc)
        rc |= run_all(s, x, dy, outs + n_out * omp_get_thread_num(), 1);
        /* only one thread of the team, the others waiting at the region's end */
#pragma omp parallel num_threads(TEAM) reduction(| : rc)
        {
            if (omp_get_thread_num() == TEAM - 1) rc |= run_all(s, x, dy, outs, 1);
        }
        /* nested: the call asks for 2 threads inside a team, with nesting off (it gets one)
         * and on (its own team of two, whose barriers are its own) */
        for (int levels = 1; levels <= 2; levels++) {
            omp_set_max_active_levels(levels);
#pragma omp parallel num_threads(TEAM) reduction(| : rc)
            {
                if (omp_get_thread_num() == 0) rc |= run_all(s, x, dy, outs + n_out * levels, 2);
            }
        }
        omp_set_max_active_levels(1);
        if (rc) return 3;
        for (int t = 0; t < TEAM; t++)
            if (memcmp(outs + n_out * t, ref, sizeof(float) * n_out) != 0) {
                fprintf(stderr, "shape %zu: team thread %d differs from the serial call\n", k, t);
                failures++;
            }
        free(x), free(dy), free(ref), free(outs);
    }
    if (!failures) printf("ok\n");
    return failures ? 1 : 0;
}
