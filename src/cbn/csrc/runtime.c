/* runtime.c - library-wide queries: OpenMP availability, default thread count, error text. */
#include "cbn.h"
#include "omp_compat.h"

int cbn_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int cbn_max_threads(void) { return omp_get_max_threads(); }

const char *cbn_error_string(int code)
{
    switch (code) {
    case CBN_OK: return "ok";
    case CBN_ERR_ARGUMENT: return "invalid argument";
    case CBN_ERR_TOO_FEW_VALUES: return "expected more than 1 value per channel when training";
    case CBN_ERR_NO_MEMORY: return "out of memory";
    default: return "unknown error";
    }
}

int cbn_combine_stats(int64_t P, int64_t C, const double *count, const double *mean,
                      const double *m2, double *count_out, double *mean_out, double *m2_out)
{
    if (P < 0 || C < 0) return CBN_ERR_ARGUMENT;
    if (C > 0 && (!count || !mean || !m2 || !mean_out || !m2_out))
        return CBN_ERR_ARGUMENT;
    double n = 0.0;
    for (int64_t c = 0; c < C; c++) mean_out[c] = m2_out[c] = 0.0;
    /* Chan et al.: merge part p into the running (n, mean, M2), parts in order 0..P-1 */
    for (int64_t p = 0; p < P; p++) {
        const double nb = count[p];
        if (nb == 0.0) continue;
        const double total = n + nb;
        const double *mb = mean + p * C, *qb = m2 + p * C;
        for (int64_t c = 0; c < C; c++) {
            const double delta = mb[c] - mean_out[c];
            mean_out[c] += delta * (nb / total);
            m2_out[c] += qb[c] + delta * delta * (n * nb / total);
        }
        n = total;
    }
    if (count_out) *count_out = n;
    return CBN_OK;
}
