/* stats.c - combining per-part batch statistics (count, mean, M2) into those of all the parts,
 * as data-parallel training does between the reduce and apply phases (cbn_combine_stats). */
#include "cbn.h"

/* Chan et al.: merge a part of nb values with mean mb and M2 qb into the running (n, *mean,
 * *m2) of n values; the new count is n + nb = total. */
static inline void merge_moments(double n, double nb, double total, double mb, double qb,
                                 double *mean, double *m2)
{
    const double delta = mb - *mean;
    *mean += delta * (nb / total);
    *m2 += qb + delta * delta * (n * nb / total);
}

int cbn_combine_stats(int64_t P, int64_t C, const double *count, const double *mean,
                      const double *m2, double *count_out, double *mean_out, double *m2_out)
{
    if (P < 0 || C < 0) return CBN_ERR_ARGUMENT;
    if (C > 0 && (!count || !mean || !m2 || !mean_out || !m2_out))
        return CBN_ERR_ARGUMENT;
    double n = 0.0;
    for (int64_t c = 0; c < C; c++) mean_out[c] = m2_out[c] = 0.0;
    for (int64_t p = 0; p < P; p++) {       /* parts in order 0..P-1 */
        const double nb = count[p];
        if (nb == 0.0) continue;
        const double total = n + nb;
        const double *mb = mean + p * C, *qb = m2 + p * C;
        for (int64_t c = 0; c < C; c++)
            merge_moments(n, nb, total, mb[c], qb[c], &mean_out[c], &m2_out[c]);
        n = total;
    }
    if (count_out) *count_out = n;
    return CBN_OK;
}
