/* scratch_threads.c - many threads take and give back the kernels' kept scratch block at once,
 * of varying sizes, some freeing it meanwhile (cbn_release_memory). Built with AddressSanitizer
 * by tests/test_scratch.py: any use after free or double free is reported and fails the run. */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "cbn.h"
#include "scratch.h"

#define THREADS 16
#define ROUNDS 200000

static void *worker(void *arg)
{
    unsigned state = (unsigned)(size_t)arg * 7919u + 1;
    for (int i = 0; i < ROUNDS; i++) {
        state = state * 1103515245u + 12345u;
        const size_t n = 64 + ((state >> 8) % 4096);
        char *block = (char *)cbn_scratch_acquire(n);
        if (!block || (uintptr_t)block % 64) return (void *)1;
        memset(block, 1, n);
        cbn_scratch_release(block);
        if (((state >> 4) & 63) == 0) cbn_release_memory();
    }
    return NULL;
}

int main(void)
{
    pthread_t threads[THREADS];
    int failed = 0;
    for (size_t i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
    for (int i = 0; i < THREADS; i++) {
        void *result;
        pthread_join(threads[i], &result);
        failed |= result != NULL;
    }
    cbn_release_memory();
    puts(failed ? "FAILED: a block was NULL or not 64-byte aligned" : "ok");
    return failed;
}
