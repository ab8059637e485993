/* copy_yardstick.c - a plain multi-threaded memory copy: the benchmark's yardstick.
 * Lives beside the benchmark (cbn.bench._copy), not among the kernels in csrc/, so that programs
 * embedding the kernels by globbing csrc/*.c do not compile it. It exists so that every kernel
 * can be compared with the cheapest pass over the same bytes at the same thread count. */
#include <stdint.h>
#include <string.h>
#include "copy_yardstick.h"
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

void cbn_yardstick_copy(void *dst, const void *src, int64_t nbytes, int n_threads)
{
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel num_threads(n_threads)
    {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        /* split at 64-byte boundaries so threads never share a cache line */
        const int64_t lines = (nbytes + 63) / 64;
        int64_t b0 = lines * t / nt * 64, b1 = lines * (t + 1) / nt * 64;
        if (b1 > nbytes) b1 = nbytes;
        if (b1 > b0) memcpy((char *)dst + b0, (const char *)src + b0, (size_t)(b1 - b0));
    }
}
