/* fork_child.c - a process forked after cbn ran on several threads calls cbn again.
 *
 * libgomp's thread pool does not survive fork(): a child whose first parallel region reuses it
 * waits forever. cbn runs every call of a forked child on one thread, which gives the bits the
 * parent got. The child runs under alarm(), so a hang ends as SIGALRM instead of hanging the
 * test. Exit status 0 and "ok": the child's calls returned the parent's bits. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cbn.h"

#define N 16
#define C 8
#define S (64 * 64)

/* training forward, then backward with dy = x, of x into y (n values) and dx */
static int run(const float *x, float *y, float *dx, int n_threads)
{
    float mean[C], invstd[C], dw[C], db[C];
    int rc = cbn_train_forward_f32(x, y, N, C, S, CBN_CHANNELS_FIRST, NULL, NULL, NULL, NULL,
                                   0.1, 1e-5, 1, mean, invstd, CBN_ACTIVATION_NONE, n_threads);
    if (rc == CBN_OK)
        rc = cbn_backward_f32(x, x, mean, invstd, NULL, NULL, CBN_ACTIVATION_NONE, dx, dw, db,
                              N, C, S, CBN_CHANNELS_FIRST, n_threads);
    return rc;
}

int main(void)
{
    const size_t n = (size_t)N * C * S;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *dx = malloc(n * sizeof *dx);
    float *y2 = malloc(n * sizeof *y2), *dx2 = malloc(n * sizeof *dx2);
    if (!x || !y || !dx || !y2 || !dx2) return 2;
    uint32_t state = 12345;
    for (size_t i = 0; i < n; i++) {
        state = state * 1664525u + 1013904223u;
        x[i] = (float)(state >> 8) / 16777216.0f + (float)(i % 7);
    }
    if (run(x, y, dx, 4) != CBN_OK) return 2;   /* the parent starts a team of threads */
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
        alarm(60);
        const int ok = run(x, y2, dx2, 4) == CBN_OK && cbn_max_threads() == 1;
        const int same = !memcmp(y, y2, n * sizeof *y) && !memcmp(dx, dx2, n * sizeof *dx);
        _exit(!ok ? 3 : !same ? 4 : 0);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) return 2;
    if (WIFSIGNALED(status)) {
        printf("the forked child was killed by signal %d (it hung)\n", WTERMSIG(status));
        return 1;
    }
    if (WEXITSTATUS(status) != 0) {
        printf("the forked child failed: %s\n", WEXITSTATUS(status) == 3
               ? "a call failed or cbn_max_threads() != 1" : "other bits than the parent's");
        return 1;
    }
    if (run(x, y2, dx2, 4) != CBN_OK || memcmp(y, y2, n * sizeof *y)) return 2;  /* parent */
    printf("ok\n");
    free(x), free(y), free(dx), free(y2), free(dx2);
    return 0;
}
