/* kernels_impl.h - the three batch-norm kernels, written once for both element types.
 *
 * Included by cbn_f32.c and cbn_f64.c with T (element type), SFX (name suffix) and
 * STATS_MAX_CANCEL defined. Every kernel has the same shape:
 *   1. reduce:   each chunk of a channel (channels-first) or each row block x column tile
 *                (channels-last) gives per-channel partial sums, in double;
 *   2. finalize: a channel's partials are added in chunk order, giving its coefficients;
 *   3. apply:    one elementwise pass writes the output from the coefficients.
 * Chunk bounds depend only on the shape and partials are added in a fixed order, so results are
 * bit-identical for every thread count.
 *
 * Statistics. Training sums d = x - pivot and d^2 with the pivot the channel's first value, so
 * partials simply add up. That is exact unless the pivot lies far from the mean: then sum(d^2)
 * dwarfs M2 = sum((x - mean)^2) and digits cancel. When more than a factor STATS_MAX_CANCEL of
 * the magnitude would cancel, the channel is summed again around its mean (a true two-pass),
 * which cancels nothing. float keeps about 2^-28 relative accuracy in M2 this way, double 2^-44.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cbn.h"
#include "plan.h"
#include "omp_compat.h"
#include "stream_store.h"

#ifndef STATS_MAX_CANCEL
#error "define STATS_MAX_CANCEL before including kernels_impl.h"
#endif

/* a*b + c, fused (one rounding) where the CPU has FMA instructions: the sums of squares and
 * products then run on the FMA units beside the adds, and round once instead of twice. A build
 * without FMA (CBN_PORTABLE on x86-64) computes a*b + c; results are bit-identical for any
 * thread count within one build. */
#if defined(__FMA__) || defined(__aarch64__)
#define MULADD(a, b, c) fma((a), (b), (c))
#else
#define MULADD(a, b, c) ((a) * (b) + (c))
#endif

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

typedef enum { OP_TRAIN, OP_BACKWARD, OP_INFER } FN(op);

/* Per-channel coefficients of the elementwise pass, in the element type so that the pass runs at
 * full SIMD width:
 *   train:    y  = (x - center) * scale + shift     center = T(mean); shift absorbs the rounding
 *                                                    of the mean, so float32 data far from zero
 *                                                    keep their precision (x - center is exact)
 *   infer:    y  = x * scale + shift
 *   backward: dx = scale*dy + b*(x - center) + shift   (center = save_mean)  */
enum { K_CENTER, K_SCALE, K_SHIFT, K_B, N_COEF };

/* Everything a kernel call reads and writes. */
typedef struct {
    FN(op) op;
    cbn_plan plan;
    const T *x, *dy;
    T *out;                       /* y or dx */
    const T *weight, *bias;
    /* train */
    T *running_mean, *running_var;
    double momentum, eps;
    int unbiased_running_var;
    T *save_mean, *save_invstd;
    /* backward */
    const T *in_mean, *in_invstd;
    T *dweight, *dbias;
    const T *y;                   /* backward through a fused ReLU: its output, else NULL */
    int relu;                     /* forward: clamp the output at 0 (fused ReLU) */
    /* split kernels (data-parallel training): reduce only, writing per-channel double sums
     * (train: mean, M2; backward: sum dy, sum dy*(x - mean)), or apply only from coefficients
     * the caller filled in */
    int reduce_only, apply_only;
    double *stat_a, *stat_b;
    /* scratch */
    double *partials;             /* 2 per chunk (channels-first) or per row block x channel */
    double *pivot;                /* C: training's shift of each channel */
    double *sums;                 /* 2*C: channels-last folded sums, then 3*C: mean, M2 and
                                   * invstd of the vectorized finalize */
    T *coef[N_COEF];              /* C each */
    unsigned char *again;         /* C: channels-last channels to sum again around the mean */
    int stream;                   /* write the output with streaming stores (it exceeds cache) */
    char *column_scratch;         /* channels-first column mode: per-thread work arrays */
    int redo;                     /* channels-last training: some channel needs a second sum */
} FN(job);

/* Runs fn(jb, t, nt) on a team of up to n threads (t < nt: its size). One thread calls it
 * directly: an OpenMP region costs about 0.3 us even for one thread, a good share of a small
 * call. The bodies then must not meet at an OpenMP barrier: called from inside a caller's
 * parallel region, it would bind to the caller's team (and hang when only some of its threads
 * are in cbn). Hence TEAM_BARRIER, a barrier only when the call runs its own team of nt > 1
 * threads. */
#define RUN_THREADS(n, fn, jb)                                                                  \
    do {                                                                                        \
        const int n_ = (n);                                                                     \
        if (n_ <= 1) {                                                                          \
            fn(jb, 0, 1);                                                                       \
        } else {                                                                                \
            _Pragma("omp parallel num_threads(n_)")                                             \
            fn(jb, omp_get_thread_num(), omp_get_num_threads());                                \
        }                                                                                       \
    } while (0)

#define TEAM_BARRIER(nt)                                                                        \
    do {                                                                                        \
        if ((nt) > 1) {                                                                         \
            _Pragma("omp barrier")                                                              \
        }                                                                                       \
    } while (0)

/* ---- contiguous-run primitives -------------------------------------------------------------
 * The reductions keep LANES partial sums, element i going to lane i % LANES, and add the lanes
 * in lane order at the end. The summation order is thus fixed by this source, not by a
 * compiler's choice of vector width, and the independent accumulators hide the latency of the
 * double adds. A run's `ahead` (0: none) is the distance in elements to the data that will be
 * summed after it; each step prefetches the matching cache lines there, so the next run is
 * fetched as steadily as this one is read. The hardware prefetcher does not follow the jump
 * between one channel's runs. */
#define LANES 32
#if LANES != 32
#error "add_lanes is written for 32 lanes"
#endif

/* the cache lines of one step's LANES values at p */
static inline void FN(prefetch_step)(const T *p)
{
#if defined(__GNUC__)
    /* integer arithmetic: a step at the end of an array asks for lines past it (prefetches
     * never fault), and a pointer formed there would be undefined */
    for (uintptr_t b = 0; b < LANES * sizeof(T); b += 64)
        __builtin_prefetch((const void *)((uintptr_t)p + b), 0, 3);
#else
    (void)p;
#endif
}

/* s[0] += the lanes of a plus ta, s[1] += those of q plus tq. The lanes are added pairwise
 * (half of them onto the other half, and again): a short dependency chain, since runs can be
 * short. Constant bounds throughout, so the lanes stay in registers. */
static inline void FN(add_lanes)(const double *a, const double *q, double ta, double tq,
                                 double *s)
{
    double a16[16], q16[16], a8[8], q8[8], a4[4], q4[4];
    for (int j = 0; j < 16; j++) a16[j] = a[j] + a[j + 16], q16[j] = q[j] + q[j + 16];
    for (int j = 0; j < 8; j++) a8[j] = a16[j] + a16[j + 8], q8[j] = q16[j] + q16[j + 8];
    for (int j = 0; j < 4; j++) a4[j] = a8[j] + a8[j + 4], q4[j] = q8[j] + q8[j + 4];
    s[0] += ((a4[0] + a4[2]) + (a4[1] + a4[3])) + ta;
    s[1] += ((q4[0] + q4[2]) + (q4[1] + q4[3])) + tq;
}

/* s[0] += sum(x - pivot), s[1] += sum((x - pivot)^2) */
static void FN(run_shifted_sums)(const T *restrict p, int64_t n, double pivot, int64_t ahead,
                                 double *s)
{
    double a[LANES] = {0.0}, q[LANES] = {0.0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        if (ahead) FN(prefetch_step)(p + i + ahead);
#pragma omp simd
        for (int j = 0; j < LANES; j++) {
            const double d = (double)p[i + j] - pivot;
            a[j] += d;
            q[j] = MULADD(d, d, q[j]);
        }
    }
    double ta = 0.0, tq = 0.0;           /* the last n % LANES values */
    for (; i < n; i++) {
        const double d = (double)p[i] - pivot;
        ta += d;
        tq = MULADD(d, d, tq);
    }
    FN(add_lanes)(a, q, ta, tq, s);
}

/* The gradient reaching batch norm: dy, or dy where y > 0 and 0 elsewhere when a fused ReLU
 * produced y (y == NULL: no activation). */
static inline T FN(relu_grad)(T dy, T y) { return y > 0 ? dy : (T)0; }
/* Both values are loaded unconditionally, so the select vectorizes as a blend. */
#define GRAD(dy, y, i) ((y) ? FN(relu_grad)((dy)[i], (y)[i]) : (dy)[i])

/* s[0] += sum(g), s[1] += sum(g * (x - mean)), g = GRAD(dy, y). Written once; the call below
 * specializes it for y == NULL and y != NULL, so the mask costs nothing without activation. */
static inline void FN(run_dy_sums_body)(const T *restrict dy, const T *restrict y,
                                        const T *restrict x, int64_t n, double mean,
                                        int64_t ahead, double *s)
{
    double a[LANES] = {0.0}, q[LANES] = {0.0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        if (ahead) {
            FN(prefetch_step)(dy + i + ahead);
            FN(prefetch_step)(x + i + ahead);
            if (y) FN(prefetch_step)(y + i + ahead);
        }
#pragma omp simd
        for (int j = 0; j < LANES; j++) {
            const double g = (double)GRAD(dy, y, i + j);
            a[j] += g;
            q[j] = MULADD(g, (double)x[i + j] - mean, q[j]);
        }
    }
    double ta = 0.0, tq = 0.0;           /* the last n % LANES values */
    for (; i < n; i++) {
        const double g = (double)GRAD(dy, y, i);
        ta += g;
        tq = MULADD(g, (double)x[i] - mean, tq);
    }
    FN(add_lanes)(a, q, ta, tq, s);
}

static void FN(run_dy_sums)(const T *dy, const T *y, const T *x, int64_t n, double mean,
                            int64_t ahead, double *s)
{
    if (y) FN(run_dy_sums_body)(dy, y, x, n, mean, ahead, s);
    else FN(run_dy_sums_body)(dy, NULL, x, n, mean, ahead, s);
}

/* One run of the elementwise pass; out may be x (or dy). relu: clamp the output at 0 (NaN
 * stays NaN); y: the mask of a fused ReLU in backward. */
static inline void FN(run_apply)(FN(op) op, int relu, const T *x, const T *dy, const T *y,
                                 T *out, int64_t n, const T *k)
{
    const T center = k[K_CENTER], scale = k[K_SCALE], shift = k[K_SHIFT], b = k[K_B];
    if (op == OP_BACKWARD) {
        if (y) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++)
                out[i] = scale * FN(relu_grad)(dy[i], y[i]) + b * (x[i] - center) + shift;
        } else {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) out[i] = scale * dy[i] + b * (x[i] - center) + shift;
        }
        return;
    }
    const T lo = relu ? (T)0 : (T)-INFINITY;     /* v < -inf never holds: no clamp */
    if (op == OP_INFER) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const T v = x[i] * scale + shift;
            out[i] = v < lo ? lo : v;
        }
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const T v = (x[i] - center) * scale + shift;
            out[i] = v < lo ? lo : v;
        }
    }
}

/* ---- finalize: a channel's summed partials -> coefficients and per-channel outputs --------- */

/* Channel c's coefficients: into the job's per-channel arrays, and back out. */
static inline void FN(store_coefs)(const FN(job) *jb, int64_t c, const T *kc)
{
    for (int i = 0; i < N_COEF; i++) jb->coef[i][c] = kc[i];
}

static inline void FN(load_coefs)(const FN(job) *jb, int64_t c, T *kc)
{
    for (int i = 0; i < N_COEF; i++) kc[i] = jb->coef[i][c];
}

/* The finalize formulas, one channel at a time; finalize_train and the vectorized channels-last
 * finalize both use them, so both give the same bits. */

/* Mean and M2 = sum((x - mean)^2) from the shifted sums s = sum(x - pivot),
 * q = sum((x - pivot)^2) over M values. M2 cancelled when more than a factor STATS_MAX_CANCEL of
 * q did (train_cancelled; also true for M2 <= 0 < q). */
static inline double FN(train_m2)(double pivot, double s, double q, double M, double *mean)
{
    *mean = pivot + s / M;
    return q - s * (s / M);
}

static inline int FN(train_cancelled)(double q, double m2) { return q > STATS_MAX_CANCEL * m2; }

/* M2 clamped at 0 (rounding can leave it just below); NaN stays NaN */
static inline double FN(clamped_m2)(double m2) { return m2 < 0.0 ? 0.0 : m2; }

/* biased variance and 1/sqrt(var + eps) */
static inline double FN(train_var)(double m2, double M) { return FN(clamped_m2)(m2) / M; }
static inline double FN(train_invstd)(double var, double eps) { return 1.0 / sqrt(var + eps); }

/* the variance estimate the running variance follows */
static inline double FN(running_var_estimate)(int unbiased, double m2, double var, double M)
{
    return unbiased ? FN(clamped_m2)(m2) / (M - 1.0) : var;
}

static inline T FN(momentum_update)(T running, double momentum, double value)
{
    return (T)((1.0 - momentum) * (double)running + momentum * value);
}

/* Coefficients of y = (x - mean)*invstd*w + b (w, b: the channel's weight and bias). */
static inline void FN(train_coef_values)(double w, double b, double mean, double invstd,
                                         T *center, T *scale, T *shift)
{
    const double sc = w * invstd;
    *center = (T)mean;
    *scale = (T)sc;
    *shift = (T)(b - (mean - (double)*center) * sc);
}

static inline void FN(train_coefs)(const FN(job) *jb, int64_t c, double mean, double invstd,
                                   T *kc)
{
    FN(train_coef_values)(jb->weight ? (double)jb->weight[c] : 1.0,
                          jb->bias ? (double)jb->bias[c] : 0.0, mean, invstd, &kc[K_CENTER],
                          &kc[K_SCALE], &kc[K_SHIFT]);
    kc[K_B] = 0;
}

/* Coefficients of dx = scale*dy + b*(x - mean) + shift from a channel's weight w, invstd and
 * its sums over all M values (shared by backward_coefs and the vectorized finalize). */
static inline void FN(backward_coef_values)(double w, double invstd, double sum_dy,
                                            double sum_dy_xmu, double M, T *scale, T *shift,
                                            T *b)
{
    const double a = w * invstd;
    *scale = (T)a;
    *shift = (T)(-a * sum_dy / M);
    *b = (T)(-a * invstd * invstd * sum_dy_xmu / M);
}

/* Coefficients of dx for channel c from the sums over all M values of the channel. */
static void FN(backward_coefs)(const FN(job) *jb, int64_t c, double sum_dy, double sum_dy_xmu,
                               double M, T *kc)
{
    kc[K_CENTER] = jb->in_mean[c];
    FN(backward_coef_values)(jb->weight ? (double)jb->weight[c] : 1.0, (double)jb->in_invstd[c],
                             sum_dy, sum_dy_xmu, M, &kc[K_SCALE], &kc[K_SHIFT], &kc[K_B]);
}

/* Training. s = sum(x - pivot), q = sum((x - pivot)^2) over the channel's M values. Returns 1
 * (and writes nothing) when too much cancelled and the channel must be summed again around
 * `*mean_out`; `accept` forces a result (used for that second sum). */
static int FN(finalize_train)(const FN(job) *jb, int64_t c, double pivot, double s, double q,
                              int accept, int write_outputs, T *kc, double *mean_out)
{
    const double M = (double)jb->plan.M;
    double mean;
    const double m2 = FN(train_m2)(pivot, s, q, M, &mean);
    *mean_out = mean;
    if (!accept && FN(train_cancelled)(q, m2)) return 1;
    const double var = FN(train_var)(m2, M);
    const double invstd = FN(train_invstd)(var, jb->eps);
    FN(train_coefs)(jb, c, mean, invstd, kc);
    if (!write_outputs) return 0;
    if (jb->stat_a) {
        jb->stat_a[c] = mean;
        jb->stat_b[c] = FN(clamped_m2)(m2);
    }
    if (jb->save_mean) jb->save_mean[c] = (T)mean;
    if (jb->save_invstd) jb->save_invstd[c] = (T)invstd;
    if (jb->running_mean) {
        jb->running_mean[c] = FN(momentum_update)(jb->running_mean[c], jb->momentum, mean);
        jb->running_var[c] = FN(momentum_update)(
            jb->running_var[c], jb->momentum,
            FN(running_var_estimate)(jb->unbiased_running_var, m2, var, M));
    }
    return 0;
}

/* Backward. sum_dy = sum(dy), sum_dy_xmu = sum(dy * (x - mean)). */
static void FN(finalize_backward)(const FN(job) *jb, int64_t c, double sum_dy, double sum_dy_xmu,
                                  int write_outputs, T *kc)
{
    if (jb->reduce_only) {          /* the caller combines the sums across processes */
        for (int i = 0; i < N_COEF; i++) kc[i] = 0;
        if (write_outputs) {
            jb->stat_a[c] = sum_dy;
            jb->stat_b[c] = sum_dy_xmu;
        }
        return;
    }
    FN(backward_coefs)(jb, c, sum_dy, sum_dy_xmu, (double)jb->plan.M, kc);
    if (!write_outputs) return;
    const double invstd = (double)jb->in_invstd[c];
    if (jb->dweight) jb->dweight[c] = (T)(sum_dy_xmu * invstd);
    if (jb->dbias) jb->dbias[c] = (T)sum_dy;
}

/* ---- channels-first ------------------------------------------------------------------------
 * Channel c holds N runs of S contiguous values, run n at offset (n*C + c)*S. Its M = N*S values,
 * numbered m = n*S + s, are cut into K chunks of plan.chunk values; chunk k of channel c is unit
 * u = c*K + k and owns partials part[2u], part[2u+1]. A chunk's partials are accumulated over
 * its pieces (a run cut at chunk bounds) in increasing m whichever traversal visits them, and a
 * channel's chunks are added in increasing k, so nothing depends on how work was spread. */

/* Offset and length of the contiguous piece of channel c that starts at value m (capped at
 * m_end). */
static inline int64_t cf_piece(const cbn_plan *p, int64_t c, int64_t m, int64_t m_end,
                               int64_t *len)
{
    const int64_t n = m / p->S, s = m - n * p->S;
    int64_t l = p->S - s;
    if (l > m_end - m) l = m_end - m;
    *len = l;
    return (n * p->C + c) * p->S + s;
}

static inline int64_t cf_chunk_end(const cbn_plan *p, int64_t k)
{
    return (k + 1) * p->chunk < p->M ? (k + 1) * p->chunk : p->M;
}

/* for each piece (off, len) of chunk k of channel c, in increasing m */
#define CF_FOR_PIECES(p, c, k, off, len)                                                        \
    for (int64_t m_ = (k) * (p)->chunk, m_end_ = cf_chunk_end(p, k), len = 0,                   \
                 off = cf_piece(p, c, m_, m_end_, &len);                                        \
         m_ < m_end_; m_ += len, off = m_ < m_end_ ? cf_piece(p, c, m_, m_end_, &len) : 0)

/* Sums of one piece; ahead: see the run primitives. */
static inline void FN(cf_reduce_piece)(const FN(job) *jb, int64_t c, int64_t off, int64_t len,
                                       double pivot, int64_t ahead, double *acc)
{
    if (jb->op == OP_TRAIN) FN(run_shifted_sums)(jb->x + off, len, pivot, ahead, acc);
    else FN(run_dy_sums)(jb->dy + off, jb->y ? jb->y + off : NULL, jb->x + off, len,
                         (double)jb->in_mean[c], ahead, acc);
}

/* Distance from a piece at `off` to the same place in the next run of its channel, or 0 when it
 * is in the last run. */
static inline int64_t cf_ahead(const cbn_plan *p, int64_t off)
{
    return p->prefetch && off / (p->C * p->S) + 1 < p->N ? p->C * p->S : 0;
}

/* Partials of chunk k of channel c (pivot: training's shift). */
static void FN(cf_reduce_chunk)(const FN(job) *jb, int64_t c, int64_t k, double pivot,
                                double *acc)
{
    acc[0] = acc[1] = 0.0;
    CF_FOR_PIECES(&jb->plan, c, k, off, len)
        FN(cf_reduce_piece)(jb, c, off, len, pivot, cf_ahead(&jb->plan, off), acc);
}

/* Partials of channels [c0, c1) in storage order (n outer): long contiguous streams that the
 * hardware prefetches well, instead of one short run per channel and n. */
static void FN(cf_reduce_group)(const FN(job) *jb, int64_t c0, int64_t c1, double *part)
{
    const cbn_plan *p = &jb->plan;
    const int64_t K = p->n_chunks, S = p->S;
    memset(part + 2 * c0 * K, 0, sizeof(double) * (size_t)(2 * (c1 - c0) * K));
    for (int64_t n = 0; n < p->N; n++)
        for (int64_t c = c0; c < c1; c++) {
            const int64_t base = (n * p->C + c) * S;
            const double pivot = jb->op == OP_TRAIN ? jb->pivot[c] : 0.0;
            const int64_t ahead = cf_ahead(p, base);
            for (int64_t s = 0; s < S;) {
                const int64_t m = n * S + s, k = m / p->chunk;
                int64_t len = (k + 1) * p->chunk - m;
                if (len > S - s) len = S - s;
                FN(cf_reduce_piece)(jb, c, base + s, len, pivot, ahead, part + 2 * (c * K + k));
                s += len;
            }
        }
}

/* Sum of a channel's chunk partials, in chunk order. */
static void FN(cf_fold)(const cbn_plan *p, int64_t c, const double *part, double *s)
{
    const double *pc = part + 2 * c * p->n_chunks;
    s[0] = s[1] = 0.0;
    for (int64_t k = 0; k < p->n_chunks; k++) {
        s[0] += pc[2 * k];
        s[1] += pc[2 * k + 1];
    }
}

/* Finalize channel c from its chunk partials. For training, a channel whose one-pass sums
 * cancelled is summed again around its mean, chunk by chunk, by the calling thread. */
static void FN(cf_finalize)(const FN(job) *jb, int64_t c, const double *part, int write_outputs,
                            T *kc)
{
    double s[2];
    FN(cf_fold)(&jb->plan, c, part, s);
    if (jb->op == OP_BACKWARD) {
        FN(finalize_backward)(jb, c, s[0], s[1], write_outputs, kc);
        return;
    }
    double mean;
    if (!FN(finalize_train)(jb, c, jb->pivot[c], s[0], s[1], 0, write_outputs, kc, &mean))
        return;
    double t[2] = {0.0, 0.0}, chunk[2];
    for (int64_t k = 0; k < jb->plan.n_chunks; k++) {
        FN(cf_reduce_chunk)(jb, c, k, mean, chunk);
        t[0] += chunk[0];
        t[1] += chunk[1];
    }
    FN(finalize_train)(jb, c, mean, t[0], t[1], 1, write_outputs, kc, &mean);
}

/* Elementwise pass over values [off, off+len) of one channel; with jb->stream, each block is
 * computed in L1 and then streamed out. */
static void FN(cf_apply_piece)(const FN(job) *jb, int64_t off, int64_t len, const T *kc)
{
    const T *dy = jb->dy ? jb->dy + off : NULL, *y = jb->y ? jb->y + off : NULL;
    if (!jb->stream) {
        FN(run_apply)(jb->op, jb->relu, jb->x + off, dy, y, jb->out + off, len, kc);
        return;
    }
    T buf[CBN_STREAM_BLOCK];
    for (int64_t i = 0; i < len; i += CBN_STREAM_BLOCK) {
        const int64_t n = len - i < CBN_STREAM_BLOCK ? len - i : CBN_STREAM_BLOCK;
        FN(run_apply)(jb->op, jb->relu, jb->x + off + i, dy ? dy + i : NULL, y ? y + i : NULL,
                      buf, n, kc);
        cbn_stream_bytes(jb->out + off + i, buf, sizeof(T) * (size_t)n);
    }
}

static void FN(cf_apply_chunk)(const FN(job) *jb, int64_t c, int64_t k, const T *kc)
{
    CF_FOR_PIECES(&jb->plan, c, k, off, len) FN(cf_apply_piece)(jb, off, len, kc);
}

/* Runs [r0, r1) of op OP in storage order (run r is (n, c) = (r / C, r % C)), coefficients
 * from jb->coef. OP is a constant at each use below, so run_apply's dispatch folds away and a
 * run costs little more than its vector loop (runs can be 49 values). */
#define CF_APPLY_RUNS(OP)                                                                       \
    for (int64_t r = r0; r < r1; r++) {                                                         \
        const T kc[N_COEF] = {center[c], scale[c], shift[c], b[c]};                             \
        const int64_t o = r * S;                                                                \
        FN(run_apply)(OP, relu, x + o, dy ? dy + o : NULL, y ? y + o : NULL, out + o, S, kc);   \
        if (++c == C) c = 0;                                                                    \
    }

static void FN(cf_apply_runs)(const FN(job) *jb, int64_t r0, int64_t r1)
{
    const int64_t C = jb->plan.C, S = jb->plan.S;
    int64_t c = r0 % C;
    if (jb->stream) {               /* each run computed in L1 and streamed out */
        for (int64_t r = r0; r < r1; r++) {
            T kc[N_COEF];
            FN(load_coefs)(jb, c, kc);
            FN(cf_apply_piece)(jb, r * S, S, kc);
            if (++c == C) c = 0;
        }
        return;
    }
    const T *center = jb->coef[K_CENTER], *scale = jb->coef[K_SCALE], *shift = jb->coef[K_SHIFT],
            *b = jb->coef[K_B];
    const T *x = jb->x, *dy = jb->dy, *y = jb->y;
    T *out = jb->out;
    const int relu = jb->relu;
    switch (jb->op) {
    case OP_INFER: CF_APPLY_RUNS(OP_INFER) break;
    case OP_TRAIN: CF_APPLY_RUNS(OP_TRAIN) break;
    case OP_BACKWARD: CF_APPLY_RUNS(OP_BACKWARD) break;
    }
}
#undef CF_APPLY_RUNS

/* Thread t owns the contiguous unit range [u0, u1). Channels whose chunks all lie in its range
 * are processed in groups that fit in cache: reduce the group, finalize its channels, apply the
 * group while it is still cached, so x crosses DRAM once. A channel cut by a range boundary
 * (at most two per thread) is reduced chunk by chunk, and finished after a barrier: every
 * thread holding part of it folds the same partials in the same order, so all get the same
 * bits; the thread holding its last chunk writes the per-channel outputs. */
static void FN(cf_column_group)(const FN(job) *jb, int64_t g0, int64_t g1, char *scratch);
static size_t FN(column_scratch_bytes)(void);

static void FN(cf_thread)(const FN(job) *jb, int64_t t, int64_t nt)
{
    const cbn_plan *p = &jb->plan;
    const int64_t U = p->n_units, K = p->n_chunks, C = p->C;
    /* channels per group: the group's input and output bytes fit the per-core cache budget */
    const int64_t arrays = jb->op == OP_BACKWARD ? 3 : 2;
    int64_t group = CBN_GROUP_BYTES / (p->M * arrays * (int64_t)sizeof(T));
    if (group < 1) group = 1;
    double *part = jb->partials;
    {
        const int64_t u0 = U * t / nt, u1 = U * (t + 1) / nt;
        if (p->columns) {         /* units are whole channels here */
            int64_t g = CBN_COLUMN_WIDTH / p->S;
            if (g > group) g = group;
            char *scratch = jb->column_scratch + (size_t)t * FN(column_scratch_bytes)();
            for (int64_t g0 = u0; g0 < u1; g0 += g)
                FN(cf_column_group)(jb, g0, g0 + g < u1 ? g0 + g : u1, scratch);
            cbn_stream_fence();
        } else {
            const int64_t own0 = (u0 + K - 1) / K, own1 = u1 / K;   /* channels wholly mine */
            /* chunks before the first whole channel (all, if the range lies inside one) */
            const int64_t head_end = u1 < own0 * K ? u1 : own0 * K;
            T kc[N_COEF];
            for (int64_t u = u0; u < head_end; u++)
                FN(cf_reduce_chunk)(jb, u / K, u % K, jb->pivot ? jb->pivot[u / K] : 0.0,
                                    part + 2 * u);
            for (int64_t g0 = own0; g0 < own1; g0 += group) {
                const int64_t g1 = g0 + group < own1 ? g0 + group : own1;
                FN(cf_reduce_group)(jb, g0, g1, part);
                for (int64_t c = g0; c < g1; c++) {
                    FN(cf_finalize)(jb, c, part, 1, kc);
                    FN(store_coefs)(jb, c, kc);
                }
                if (!jb->reduce_only)
                    for (int64_t n = 0; n < p->N; n++)
                        FN(cf_apply_runs)(jb, n * C + g0, n * C + g1);
            }
            for (int64_t u = own1 * K > head_end ? own1 * K : head_end; u < u1; u++)
                FN(cf_reduce_chunk)(jb, u / K, u % K, jb->pivot ? jb->pivot[u / K] : 0.0,
                                    part + 2 * u);
            TEAM_BARRIER(nt);
            /* Channels cut by a range boundary: at most the one holding u0 and the one
             * holding u1 - 1. All of them are finalized before any is applied, because a second
             * pass over a channel reads all of its x, which in place (y == x) another thread's
             * apply would be overwriting. */
            const int64_t c_lo = u0 / K, c_hi = (u1 - 1) / K;
            T k_lo[N_COEF], k_hi[N_COEF];
#define WHOLLY_MINE(c) ((c) >= own0 && (c) < own1)
            const int cut_lo = u1 > u0 && !WHOLLY_MINE(c_lo);
            const int cut_hi = u1 > u0 && c_hi != c_lo && !WHOLLY_MINE(c_hi);
#undef WHOLLY_MINE
            if (cut_lo) FN(cf_finalize)(jb, c_lo, part, (c_lo + 1) * K - 1 < u1, k_lo);
            if (cut_hi) FN(cf_finalize)(jb, c_hi, part, (c_hi + 1) * K - 1 < u1, k_hi);
            TEAM_BARRIER(nt);
            if (!jb->reduce_only)
                for (int64_t u = u0; u < u1; u++) {
                    const int64_t c = u / K;
                    if (cut_lo && c == c_lo) FN(cf_apply_chunk)(jb, c, u - c * K, k_lo);
                    else if (cut_hi && c == c_hi) FN(cf_apply_chunk)(jb, c, u - c * K, k_hi);
                }
            cbn_stream_fence();
        }
    }
}

static void FN(cf_run_job)(const FN(job) *jb)
{
    RUN_THREADS(jb->plan.n_threads, FN(cf_thread), jb);
}

/* ---- channels-last: unit = (row block, column tile) ----------------------------------------
 * Partials are structure-of-arrays: first sums at part[rb*C + c], second at
 * part[n_row_blocks*C + rb*C + c]. */

typedef struct { int64_t r0, r1, c0, w; int prefetch; } FN(tile);

static FN(tile) FN(unit_tile)(const cbn_plan *p, int64_t u)
{
    const int64_t rb = u / p->n_col_tiles, ct = u - rb * p->n_col_tiles;
    FN(tile) t;
    t.r0 = rb * p->row_block;
    t.r1 = t.r0 + p->row_block < p->rows ? t.r0 + p->row_block : p->rows;
    t.c0 = ct * p->col_tile;
    t.w = t.c0 + p->col_tile < p->C ? p->col_tile : p->C - t.c0;
    t.prefetch = p->prefetch;
    return t;
}

/* Rows of a tile lie C values apart. When that is farther than the tile is wide, the hardware
 * prefetcher does not follow from one row to the next, so a step over rows [r, r + 4) asks,
 * for each CL_PREFETCH_COLUMNS columns [j, j + CL_PREFETCH_COLUMNS) it reads, for the same
 * columns of the next step's rows. (Blocks of 64 columns: narrower ones cost more in loop
 * overhead than the prefetch saves.) */
#define CL_PREFETCH_COLUMNS 64
static inline void FN(prefetch_next_rows)(const T *p, int64_t C, int64_t r, int64_t r_end,
                                          int64_t j, int64_t j_end)
{
    for (int64_t i = r + 4; i < r + 8 && i < r_end; i++)
        for (int64_t k = j; k < j + CL_PREFETCH_COLUMNS && k < j_end; k += LANES)
            FN(prefetch_step)(p + i * C + k);
}

/* When the tile is whole rows, it is one contiguous stream, which the hardware prefetcher alone
 * does not fetch fast enough (a channels-last backward reduce ran at half the speed of the
 * channels-first one). A step over rows [r, r + 4) then asks for the 4 rows `ahead` rows on,
 * `ahead` being about CL_PREFETCH_BYTES. */
#define CL_PREFETCH_BYTES 4096
static inline int64_t FN(rows_ahead)(int64_t C)
{
    const int64_t step_bytes = 4 * C * (int64_t)sizeof(T);
    return 4 * ((CL_PREFETCH_BYTES + step_bytes - 1) / step_bytes);
}

static inline void FN(prefetch_rows_ahead)(const T *p, int64_t C, int64_t r, int64_t r_end,
                                           int64_t ahead)
{
    const int64_t a = r + ahead, b = a + 4 < r_end ? a + 4 : r_end;
    for (int64_t i = a * C; i < b * C; i += LANES) FN(prefetch_step)(p + i);
}

/* Column sums of the tile: s[j] = sum_r (x - pivot[j]), q[j] = sum_r (x - pivot[j])^2.
 * Four rows per step keep the accumulators' memory traffic below the data's. */
static void FN(cl_shifted_sums)(const T *x, int64_t C, FN(tile) t, const double *restrict pivot,
                                double *restrict s, double *restrict q)
{
    const int far = t.prefetch && C > t.w;
    const int64_t step = far ? CL_PREFETCH_COLUMNS : t.w;    /* columns per prefetch */
    const int64_t ahead = FN(rows_ahead)(C);
    int64_t r = t.r0;
    for (; r + 4 <= t.r1; r += 4) {
        const T *restrict x0 = x + r * C + t.c0, *restrict x1 = x0 + C, *restrict x2 = x1 + C,
                *restrict x3 = x2 + C;
        if (t.prefetch && !far) FN(prefetch_rows_ahead)(x, C, r, t.r1, ahead);
        for (int64_t j0 = 0; j0 < t.w; j0 += step) {
            const int64_t j1 = j0 + step < t.w ? j0 + step : t.w;
            if (far) FN(prefetch_next_rows)(x + t.c0, C, r, t.r1, j0, t.w);
#pragma omp simd
            for (int64_t j = j0; j < j1; j++) {
                const double p = pivot[j];
                const double d0 = (double)x0[j] - p, d1 = (double)x1[j] - p,
                             d2 = (double)x2[j] - p, d3 = (double)x3[j] - p;
                s[j] += (d0 + d1) + (d2 + d3);
                q[j] += MULADD(d1, d1, d0 * d0) + MULADD(d3, d3, d2 * d2);
            }
        }
    }
    for (; r < t.r1; r++) {
        const T *restrict xr = x + r * C + t.c0;
#pragma omp simd
        for (int64_t j = 0; j < t.w; j++) {
            const double d = (double)xr[j] - pivot[j];
            s[j] += d;
            q[j] = MULADD(d, d, q[j]);
        }
    }
}

/* Column sums s[j] = sum_r g, q[j] = sum_r g*(x - mean[j]) with g = GRAD(dy, y), four rows
 * per step. Written once; the two calls below specialize it for y == NULL and y != NULL, so the
 * mask costs nothing when there is no activation. */
static inline void FN(cl_dy_sums_body)(const T *x, const T *dy, const T *y, int64_t C, FN(tile) t,
                                       const T *restrict mean, double *restrict s,
                                       double *restrict q)
{
    const int far = t.prefetch && C > t.w;
    const int64_t step = far ? CL_PREFETCH_COLUMNS : t.w;    /* columns per prefetch */
    const int64_t ahead = FN(rows_ahead)(C);
    int64_t r = t.r0;
    for (; r + 4 <= t.r1; r += 4) {
        const int64_t o0 = r * C + t.c0, o1 = o0 + C, o2 = o1 + C, o3 = o2 + C;
        if (t.prefetch && !far) {
            FN(prefetch_rows_ahead)(x, C, r, t.r1, ahead);
            FN(prefetch_rows_ahead)(dy, C, r, t.r1, ahead);
            if (y) FN(prefetch_rows_ahead)(y, C, r, t.r1, ahead);
        }
        for (int64_t j0 = 0; j0 < t.w; j0 += step) {
            const int64_t j1 = j0 + step < t.w ? j0 + step : t.w;
            if (far) {
                FN(prefetch_next_rows)(x + t.c0, C, r, t.r1, j0, t.w);
                FN(prefetch_next_rows)(dy + t.c0, C, r, t.r1, j0, t.w);
                if (y) FN(prefetch_next_rows)(y + t.c0, C, r, t.r1, j0, t.w);
            }
#pragma omp simd
            for (int64_t j = j0; j < j1; j++) {
                const double m = (double)mean[j];
                const double e0 = (double)GRAD(dy, y, o0 + j), e1 = (double)GRAD(dy, y, o1 + j),
                             e2 = (double)GRAD(dy, y, o2 + j), e3 = (double)GRAD(dy, y, o3 + j);
                s[j] += (e0 + e1) + (e2 + e3);
                q[j] += MULADD(e1, (double)x[o1 + j] - m, e0 * ((double)x[o0 + j] - m)) +
                        MULADD(e3, (double)x[o3 + j] - m, e2 * ((double)x[o2 + j] - m));
            }
        }
    }
    for (; r < t.r1; r++) {
        const int64_t o = r * C + t.c0;
#pragma omp simd
        for (int64_t j = 0; j < t.w; j++) {
            const double e = (double)GRAD(dy, y, o + j);
            s[j] += e;
            q[j] = MULADD(e, (double)x[o + j] - (double)mean[j], q[j]);
        }
    }
}

static void FN(cl_dy_sums)(const T *x, const T *dy, const T *y, int64_t C, FN(tile) t,
                           const T *restrict mean, double *restrict s, double *restrict q)
{
    if (y) FN(cl_dy_sums_body)(x, dy, y, C, t, mean, s, q);
    else FN(cl_dy_sums_body)(x, dy, NULL, C, t, mean, s, q);
}

static void FN(cl_reduce_unit)(const FN(job) *jb, int64_t u)
{
    const cbn_plan *p = &jb->plan;
    const FN(tile) t = FN(unit_tile)(p, u);
    const int64_t at = (t.r0 / p->row_block) * p->C + t.c0;
    double *s = jb->partials + at, *q = jb->partials + p->n_row_blocks * p->C + at;
    memset(s, 0, sizeof(double) * (size_t)t.w);
    memset(q, 0, sizeof(double) * (size_t)t.w);
    if (jb->op == OP_TRAIN) FN(cl_shifted_sums)(jb->x, p->C, t, jb->pivot + t.c0, s, q);
    else FN(cl_dy_sums)(jb->x, jb->dy, jb->y, p->C, t, jb->in_mean + t.c0, s, q);
}

/* Channel sums over row blocks, in row-block order, for channels [c0, c1) (vectorized across
 * channels). */
static void FN(cl_fold)(const FN(job) *jb, int64_t c0, int64_t c1)
{
    const cbn_plan *p = &jb->plan;
    const int64_t C = p->C, B = p->n_row_blocks;
    double *restrict s = jb->sums, *restrict q = jb->sums + C;
    const double *ps = jb->partials, *pq = jb->partials + B * C;
    for (int64_t c = c0; c < c1; c++) s[c] = q[c] = 0.0;
    for (int64_t rb = 0; rb < B; rb++)
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) {
            s[c] += ps[rb * C + c];
            q[c] += pq[rb * C + c];
        }
}

/* Rows of the elementwise pass, one row per step: several rows per step would share the
 * coefficient loads, but rows 4 KiB apart (C = 1024 floats) then alias in the store buffer. */
static void FN(cl_apply_rows)(FN(op) op, int relu, T *const *coef, const T *x, const T *dy,
                              const T *y, T *o, int64_t rows, int64_t stride, int64_t w,
                              int prefetch)
{
    const T *restrict center = coef[K_CENTER], *restrict scale = coef[K_SCALE],
            *restrict shift = coef[K_SHIFT], *restrict b = coef[K_B];
    const T lo = relu ? (T)0 : (T)-INFINITY;
    for (int64_t r = 0; r < rows; r++) {
        const T *xr = x + r * stride;
        T *orow = o + r * stride;
#if defined(__GNUC__)
        /* rows far apart: ask for the next output row (for writing) while this one is computed,
         * since the hardware prefetcher does not follow the jump and each store would wait for
         * its line */
        if (prefetch && stride > w && r + 1 < rows)
            for (size_t k = 0; k < sizeof(T) * (size_t)w; k += 64)
                __builtin_prefetch((char *)(orow + stride) + k, 1, 3);
#endif
        if (op == OP_INFER) {
#pragma omp simd
            for (int64_t j = 0; j < w; j++) {
                const T v = xr[j] * scale[j] + shift[j];
                orow[j] = v < lo ? lo : v;
            }
        } else if (op == OP_TRAIN) {
#pragma omp simd
            for (int64_t j = 0; j < w; j++) {
                const T v = (xr[j] - center[j]) * scale[j] + shift[j];
                orow[j] = v < lo ? lo : v;
            }
        } else if (y) {
            const T *g = dy + r * stride, *yr = y + r * stride;
#pragma omp simd
            for (int64_t j = 0; j < w; j++)
                orow[j] = scale[j] * GRAD(g, yr, j) + b[j] * (xr[j] - center[j]) + shift[j];
        } else {
            const T *g = dy + r * stride;
#pragma omp simd
            for (int64_t j = 0; j < w; j++)
                orow[j] = scale[j] * g[j] + b[j] * (xr[j] - center[j]) + shift[j];
        }
    }
}

/* Rows of the elementwise pass with per-column coefficients, starting at element `off` of the
 * job's arrays; with jb->stream, each row is computed into buf (w values) and streamed out. */
static void FN(apply_rows)(const FN(job) *jb, T *const *coef, int64_t off, int64_t rows,
                           int64_t stride, int64_t w, T *buf)
{
    const T *x = jb->x + off, *dy = jb->dy ? jb->dy + off : NULL, *y = jb->y ? jb->y + off : NULL;
    T *out = jb->out + off;
    if (!jb->stream) {
        FN(cl_apply_rows)(jb->op, jb->relu, coef, x, dy, y, out, rows, stride, w,
                          jb->plan.prefetch);
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t o = r * stride;
        FN(cl_apply_rows)(jb->op, jb->relu, coef, x + o, dy ? dy + o : NULL, y ? y + o : NULL,
                          buf, 1, stride, w, jb->plan.prefetch);
        cbn_stream_bytes(out + o, buf, sizeof(T) * (size_t)w);
    }
}

static void FN(cl_apply_unit)(const FN(job) *jb, int64_t u)
{
    const cbn_plan *p = &jb->plan;
    const FN(tile) t = FN(unit_tile)(p, u);
    T *coef[N_COEF];
    for (int i = 0; i < N_COEF; i++) coef[i] = jb->coef[i] + t.c0;
    T buf[CBN_MAX_COL_TILE];
    FN(apply_rows)(jb, coef, t.r0 * p->C + t.c0, t.r1 - t.r0, p->C, t.w, buf);
}

/* Elementwise pass over row block rb across all channels, row by row: consecutive rows are
 * adjacent, so the pass reads one contiguous stream, where a column tile's rows (C values
 * apart) would each restart the hardware prefetcher. */
static void FN(cl_apply_block)(const FN(job) *jb, int64_t rb)
{
    const cbn_plan *p = &jb->plan;
    const int64_t C = p->C, r0 = rb * p->row_block;
    const int64_t r1 = r0 + p->row_block < p->rows ? r0 + p->row_block : p->rows;
    T buf[CBN_MAX_COL_TILE];
    if (p->n_col_tiles == 1 || !jb->stream) {      /* whole rows (buf: streaming only) */
        FN(apply_rows)(jb, jb->coef, r0 * C, r1 - r0, C, C, buf);
        return;
    }
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c0 = 0; c0 < C; c0 += p->col_tile) {
            T *coef[N_COEF];
            for (int i = 0; i < N_COEF; i++) coef[i] = jb->coef[i] + c0;
            FN(apply_rows)(jb, coef, r * C + c0, 1, C,
                           c0 + p->col_tile < C ? p->col_tile : C - c0, buf);
        }
}

/* ---- channels-first with short runs (plan.columns) -----------------------------------------
 * With S small, one run per (n, c) is too short to stream or vectorize well. Channels [g0, g1)
 * are then the columns [g0*S, g1*S) of the matrix x[n][c*S + s] and go through the
 * channels-last loops: column sums over n, then each channel adds its S columns in order. A
 * channel is never split between threads in this mode, so this is its only summation order. */

enum { COLUMN_DOUBLES = 3, COLUMN_TS = N_COEF + 1 };   /* per column of the scratch */

static size_t FN(column_scratch_bytes)(void)
{
    return (sizeof(double) * COLUMN_DOUBLES + sizeof(T) * COLUMN_TS) * CBN_COLUMN_WIDTH;
}

/* Channel c's sums from its S column sums (columns relative to the group start g0). */
static void FN(fold_columns)(const double *s, const double *q, int64_t S, int64_t j0,
                             double *sums)
{
    sums[0] = sums[1] = 0.0;
    for (int64_t j = j0; j < j0 + S; j++) {
        sums[0] += s[j];
        sums[1] += q[j];
    }
}

/* The elementwise pass over channels [g0, g1) as columns: each channel's coefficients
 * (jb->coef) spread over its S columns, then row after row. tscratch: (N_COEF + 1) *
 * CBN_COLUMN_WIDTH values (the column coefficients and a row buffer for streaming). */
static void FN(cf_column_apply)(const FN(job) *jb, int64_t g0, int64_t g1, T *tscratch)
{
    const cbn_plan *p = &jb->plan;
    const int64_t S = p->S, W = CBN_COLUMN_WIDTH;
    T *coef[N_COEF];
    for (int i = 0; i < N_COEF; i++) {
        T *restrict col = coef[i] = tscratch + i * W;
        for (int64_t c = g0; c < g1; c++) {
            const T k = jb->coef[i][c];
            for (int64_t j = (c - g0) * S; j < (c - g0 + 1) * S; j++) col[j] = k;
        }
    }
    FN(apply_rows)(jb, coef, g0 * S, p->N, p->C * S, (g1 - g0) * S, tscratch + N_COEF * W);
}

static void FN(cf_column_group)(const FN(job) *jb, int64_t g0, int64_t g1, char *scratch)
{
    const cbn_plan *p = &jb->plan;
    const int64_t S = p->S, stride = p->C * S, w = (g1 - g0) * S;
    const int64_t W = CBN_COLUMN_WIDTH;
    double *s = (double *)scratch, *q = s + W, *col = q + W;   /* col: pivot per column */
    T *center = (T *)(col + W);          /* backward: the mean per column */
    FN(tile) t = {0, p->N, g0 * S, w, p->prefetch};
    for (int64_t c = g0; c < g1; c++) {
        double *restrict pc = col + (c - g0) * S;
        T *restrict mc = center + (c - g0) * S;
        if (jb->op == OP_TRAIN) {
            const double pivot = jb->pivot[c];
            for (int64_t j = 0; j < S; j++) pc[j] = pivot;
        } else {
            const T mean = jb->in_mean[c];
            for (int64_t j = 0; j < S; j++) mc[j] = mean;
        }
    }
    memset(s, 0, sizeof(double) * (size_t)w);
    memset(q, 0, sizeof(double) * (size_t)w);
    if (jb->op == OP_TRAIN) FN(cl_shifted_sums)(jb->x, stride, t, col, s, q);
    else FN(cl_dy_sums)(jb->x, jb->dy, jb->y, stride, t, center, s, q);
    for (int64_t c = g0; c < g1; c++) {
        const int64_t j0 = (c - g0) * S;
        double sums[2], mean;
        T kc[N_COEF];
        FN(fold_columns)(s, q, S, j0, sums);
        if (jb->op == OP_BACKWARD) {
            FN(finalize_backward)(jb, c, sums[0], sums[1], 1, kc);
        } else if (FN(finalize_train)(jb, c, jb->pivot[c], sums[0], sums[1], 0, 1, kc, &mean)) {
            /* cancelled: sum this channel's columns again around its mean */
            FN(tile) tc = {0, p->N, c * S, S, p->prefetch};
            for (int64_t j = j0; j < j0 + S; j++) col[j] = mean, s[j] = q[j] = 0.0;
            FN(cl_shifted_sums)(jb->x, stride, tc, col + j0, s + j0, q + j0);
            FN(fold_columns)(s, q, S, j0, sums);
            FN(finalize_train)(jb, c, mean, sums[0], sums[1], 1, 1, kc, &mean);
        }
        FN(store_coefs)(jb, c, kc);
    }
    if (!jb->reduce_only) FN(cf_column_apply)(jb, g0, g1, (T *)(col + W));
}

/* First finalize of channels [c0, c1) in channels-last training. With few rows per channel,
 * the per-channel division and square root are most of the work, so this is a series of simple
 * loops the compiler vectorizes (same formulas as finalize_train). A channel whose sums
 * cancelled gets jb->again[c] set and its pivot moved to its mean; returns whether any did. */
static int FN(cl_finalize_train)(const FN(job) *jb, int64_t c0, int64_t c1)
{
    const int64_t C = jb->plan.C;
    const double M = (double)jb->plan.M, eps = jb->eps, mom = jb->momentum;
    const double *restrict s = jb->sums, *restrict q = jb->sums + C;
    double *restrict mean = jb->sums + 2 * C, *restrict m2 = jb->sums + 3 * C,
           *restrict invstd = jb->sums + 4 * C;
    unsigned char *restrict again = jb->again;
    int redo = 0;
#pragma omp simd reduction(| : redo)
    for (int64_t c = c0; c < c1; c++) {
        m2[c] = FN(train_m2)(jb->pivot[c], s[c], q[c], M, &mean[c]);
        const int cancelled = FN(train_cancelled)(q[c], m2[c]);
        again[c] = (unsigned char)cancelled;
        redo |= cancelled;
    }
    if (redo) {             /* rare: the channel-by-channel finalize for this range */
        for (int64_t c = c0; c < c1; c++) {
            T kc[N_COEF];
            double mn;
            if (again[c]) {
                jb->pivot[c] = mean[c];
                continue;
            }
            FN(finalize_train)(jb, c, jb->pivot[c], s[c], q[c], 1, 1, kc, &mn);
            FN(store_coefs)(jb, c, kc);
        }
        return 1;
    }
#pragma omp simd
    for (int64_t c = c0; c < c1; c++) invstd[c] = FN(train_invstd)(FN(train_var)(m2[c], M), eps);
    {
        const T *restrict w = jb->weight, *restrict b = jb->bias;
        T *restrict center = jb->coef[K_CENTER], *restrict scale = jb->coef[K_SCALE],
          *restrict shift = jb->coef[K_SHIFT], *restrict kb = jb->coef[K_B];
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) {
            FN(train_coef_values)(w ? (double)w[c] : 1.0, b ? (double)b[c] : 0.0, mean[c],
                                  invstd[c], &center[c], &scale[c], &shift[c]);
            kb[c] = 0;
        }
    }
    if (jb->stat_a) {
        double *restrict a = jb->stat_a, *restrict b = jb->stat_b;
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) {
            a[c] = mean[c];
            b[c] = FN(clamped_m2)(m2[c]);
        }
    }
    if (jb->save_mean) {
        T *restrict o = jb->save_mean;
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) o[c] = (T)mean[c];
    }
    if (jb->save_invstd) {
        T *restrict o = jb->save_invstd;
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) o[c] = (T)invstd[c];
    }
    if (jb->running_mean) {
        T *restrict rm = jb->running_mean, *restrict rv = jb->running_var;
        const int unbiased = jb->unbiased_running_var;
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) {
            rm[c] = FN(momentum_update)(rm[c], mom, mean[c]);
            rv[c] = FN(momentum_update)(
                rv[c], mom,
                FN(running_var_estimate)(unbiased, m2[c], FN(train_var)(m2[c], M), M));
        }
    }
    return 0;
}

/* Finalize of channels [c0, c1) in channels-last backward, vectorized like cl_finalize_train
 * (same formulas as finalize_backward). */
static void FN(cl_finalize_backward)(const FN(job) *jb, int64_t c0, int64_t c1)
{
    const int64_t C = jb->plan.C;
    const double *restrict sum_dy = jb->sums, *restrict sum_dy_xmu = jb->sums + C;
    if (jb->reduce_only) {          /* the caller combines the sums across processes */
        double *restrict a = jb->stat_a, *restrict b = jb->stat_b;
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) {
            a[c] = sum_dy[c];
            b[c] = sum_dy_xmu[c];
        }
        return;
    }
    const double M = (double)jb->plan.M;
    const T *restrict w = jb->weight, *restrict mean = jb->in_mean, *restrict inv = jb->in_invstd;
    T *restrict center = jb->coef[K_CENTER], *restrict scale = jb->coef[K_SCALE],
      *restrict shift = jb->coef[K_SHIFT], *restrict b = jb->coef[K_B];
#pragma omp simd
    for (int64_t c = c0; c < c1; c++) {
        center[c] = mean[c];
        FN(backward_coef_values)(w ? (double)w[c] : 1.0, (double)inv[c], sum_dy[c],
                                 sum_dy_xmu[c], M, &scale[c], &shift[c], &b[c]);
    }
    if (jb->dweight) {
        T *restrict dw = jb->dweight;
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) dw[c] = (T)(sum_dy_xmu[c] * (double)inv[c]);
    }
    if (jb->dbias) {
        T *restrict db = jb->dbias;
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) db[c] = (T)sum_dy[c];
    }
}

/* Reduce every unit; fold and finalize each channel; sum again, around the mean, the channels
 * whose one-pass sums cancelled (rare: a first value far out in its channel); then apply. Each
 * thread applies about the row blocks it reduced, last first: those were read most recently and
 * are the ones still in cache when the tensor does not fit. */
static void FN(cl_thread)(FN(job) *jb, int64_t t, int64_t nt)
{
    const cbn_plan *p = &jb->plan;
    const int64_t U = p->n_units, C = p->C;
    {
        const int64_t u0 = U * t / nt, u1 = U * (t + 1) / nt;
        const int64_t c0 = C * t / nt, c1 = C * (t + 1) / nt;
        if (!jb->apply_only) {
            for (int64_t u = u0; u < u1; u++) FN(cl_reduce_unit)(jb, u);
            TEAM_BARRIER(nt);
            FN(cl_fold)(jb, c0, c1);
            int my_redo = 0;
            if (jb->op == OP_TRAIN) {
                my_redo = FN(cl_finalize_train)(jb, c0, c1);
            } else {
                FN(cl_finalize_backward)(jb, c0, c1);
            }
            if (my_redo) {
#pragma omp atomic write
                jb->redo = 1;
            }
            TEAM_BARRIER(nt);
            int again;
#pragma omp atomic read
            again = jb->redo;
            if (again) {            /* all threads agree: a second pass, pivots at the means */
                for (int64_t u = u0; u < u1; u++) FN(cl_reduce_unit)(jb, u);
                TEAM_BARRIER(nt);
                FN(cl_fold)(jb, c0, c1);
                for (int64_t c = c0; c < c1; c++) {
                    T kc[N_COEF];
                    double mean;
                    if (!jb->again[c]) continue;
                    FN(finalize_train)(jb, c, jb->pivot[c], jb->sums[c], jb->sums[C + c], 1, 1,
                                       kc, &mean);
                    FN(store_coefs)(jb, c, kc);
                }
                TEAM_BARRIER(nt);
            }
        }
        /* by whole row blocks when there are enough to go round, else by units */
        const int64_t B = p->n_row_blocks;
        if (!jb->reduce_only) {
            if (B >= nt)
                for (int64_t rb = B * (t + 1) / nt; rb-- > B * t / nt;)
                    FN(cl_apply_block)(jb, rb);
            else
                for (int64_t u = u1; u-- > u0;) FN(cl_apply_unit)(jb, u);
        }
        cbn_stream_fence();
    }
}

static void FN(cl_run_job)(FN(job) *jb)
{
    jb->redo = 0;
    RUN_THREADS(jb->plan.n_threads, FN(cl_thread), jb);
}

/* ---- shared entry plumbing ------------------------------------------------------------------ */

static int FN(check_shape)(const void *x, const void *out, int64_t N, int64_t C, int64_t S,
                           cbn_layout layout, int n_threads)
{
    if (N < 0 || C < 0 || S < 0 || n_threads < 1) return CBN_ERR_ARGUMENT;
    if (layout != CBN_CHANNELS_FIRST && layout != CBN_CHANNELS_LAST) return CBN_ERR_ARGUMENT;
    if ((N * C * S > 0) && (!x || !out)) return CBN_ERR_ARGUMENT;
    return CBN_OK;
}

/* CBN_OK for a known activation; a fused ReLU's gradient also needs its output y when there are
 * values (n_values > 0). Forward calls pass y = NULL, n_values = 0. */
static int FN(check_activation)(cbn_activation activation, const T *y, int64_t n_values)
{
    if (activation == CBN_ACTIVATION_NONE) return CBN_OK;
    if (activation != CBN_ACTIVATION_RELU) return CBN_ERR_ARGUMENT;
    return n_values > 0 && !y ? CBN_ERR_ARGUMENT : CBN_OK;
}

/* Plan the call and allocate its scratch in one block: partials, pivots, channel sums and
 * coefficient arrays. */
static int FN(start_job)(FN(job) *jb, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                         int n_threads)
{
    cbn_plan *p = &jb->plan;
    cbn_make_plan(p, N, C, S, layout, n_threads);
    jb->stream = (double)(N * C * S) * sizeof(T) >= CBN_STREAM_MIN_BYTES;
    p->prefetch = (double)(N * C * S) * sizeof(T) >= CBN_PREFETCH_MIN_BYTES;
    const int64_t n_part = jb->apply_only ? 0
                           : p->channels_last ? 2 * p->n_row_blocks * C
                                              : 2 * p->n_units;
    const int64_t n_double = n_part + 6 * C;
    const size_t column_bytes = p->columns && !jb->apply_only
                                    ? FN(column_scratch_bytes)() * (size_t)p->n_threads
                                    : 0;
    const size_t main_bytes = sizeof(double) * (size_t)n_double +
                              sizeof(T) * (size_t)(N_COEF * C) + (size_t)C;
    char *buf = (char *)malloc(main_bytes + column_bytes + 64);
    if (!buf) return CBN_ERR_NO_MEMORY;
    jb->column_scratch = buf + (main_bytes + 63) / 64 * 64;
    jb->partials = (double *)buf;
    jb->pivot = jb->op == OP_TRAIN && !jb->apply_only ? jb->partials + n_part : NULL;
    jb->sums = jb->partials + n_part + C;
    T *coef = (T *)(buf + sizeof(double) * (size_t)n_double);
    for (int i = 0; i < N_COEF; i++) jb->coef[i] = coef + i * C;
    jb->again = (unsigned char *)(coef + N_COEF * C);
    if (jb->pivot) {              /* each channel's first value */
        for (int64_t c = 0; c < C; c++) {
            int64_t len;
            jb->pivot[c] = (double)jb->x[p->channels_last ? c : cf_piece(p, c, 0, 1, &len)];
        }
    }
    return CBN_OK;
}

/* Apply-only channels-first: thread t of nt takes its share of the runs in storage order or,
 * with few runs (a long single channel), of the values, cutting runs into pieces. */
static void FN(cf_apply_thread)(FN(job) *jb, int64_t t, int64_t nt)
{
    const int64_t C = jb->plan.C, S = jb->plan.S, R = jb->plan.N * C;
    if (R >= 8 * nt) {
        FN(cf_apply_runs)(jb, R * t / nt, R * (t + 1) / nt);
    } else {
        const int64_t v1 = R * S * (t + 1) / nt;
        for (int64_t v = R * S * t / nt; v < v1;) {
            const int64_t r = v / S, c = r % C;
            const int64_t len = (r + 1) * S < v1 ? (r + 1) * S - v : v1 - v;
            T kc[N_COEF];
            FN(load_coefs)(jb, c, kc);
            FN(cf_apply_piece)(jb, v, len, kc);
            v += len;
        }
    }
    cbn_stream_fence();
}

static void FN(run_job)(FN(job) *jb)
{
    if (jb->plan.channels_last) {
        FN(cl_run_job)(jb);
    } else if (!jb->apply_only) {
        FN(cf_run_job)(jb);
    } else {            /* one pass in storage order, split evenly over threads */
        RUN_THREADS(jb->plan.n_threads, FN(cf_apply_thread), jb);
    }
    free(jb->partials);
}

/* ---- public kernels ------------------------------------------------------------------------- */

int FN(cbn_train_forward)(const T *x, T *y, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                          const T *weight, const T *bias, T *running_mean, T *running_var,
                          double momentum, double eps, int unbiased_running_var, T *save_mean,
                          T *save_invstd, cbn_activation activation, int n_threads)
{
    int rc = FN(check_shape)(x, y, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, NULL, 0))) return rc;
    if (!(eps >= 0.0) || !(momentum >= 0.0 && momentum <= 1.0)) return CBN_ERR_ARGUMENT;
    if ((running_mean == NULL) != (running_var == NULL)) return CBN_ERR_ARGUMENT;
    if (N * S <= 1) return CBN_ERR_TOO_FEW_VALUES;
    if (C == 0) return CBN_OK;

    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_TRAIN;
    jb.x = x;
    jb.out = y;
    jb.weight = weight;
    jb.bias = bias;
    jb.running_mean = running_mean;
    jb.running_var = running_var;
    jb.momentum = momentum;
    jb.eps = eps;
    jb.unbiased_running_var = unbiased_running_var;
    jb.save_mean = save_mean;
    jb.save_invstd = save_invstd;
    jb.relu = activation == CBN_ACTIVATION_RELU;
    if ((rc = FN(start_job)(&jb, N, C, S, layout, n_threads))) return rc;
    FN(run_job)(&jb);
    return CBN_OK;
}

int FN(cbn_backward)(const T *dy, const T *x, const T *save_mean, const T *save_invstd,
                     const T *weight, const T *y, cbn_activation activation, T *dx, T *dweight,
                     T *dbias, int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads)
{
    int rc = FN(check_shape)(x, dx, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, y, N * C * S))) return rc;
    if (C > 0 && (!dy || !save_mean || !save_invstd)) return CBN_ERR_ARGUMENT;
    if (C == 0) return CBN_OK;
    if (N * S == 0) {        /* empty batch: the parameters get zero gradients */
        for (int64_t c = 0; c < C; c++) {
            if (dweight) dweight[c] = 0;
            if (dbias) dbias[c] = 0;
        }
        return CBN_OK;
    }

    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_BACKWARD;
    jb.x = x;
    jb.dy = dy;
    jb.out = dx;
    jb.weight = weight;
    jb.in_mean = save_mean;
    jb.in_invstd = save_invstd;
    jb.dweight = dweight;
    jb.dbias = dbias;
    jb.y = activation == CBN_ACTIVATION_RELU ? y : NULL;
    if ((rc = FN(start_job)(&jb, N, C, S, layout, n_threads))) return rc;
    FN(run_job)(&jb);
    return CBN_OK;
}

/* scale = weight/sqrt(var + eps), shift = bias - mean*scale for every channel, computed in
 * double and stored in T (one loop, vectorized: it runs once per inference call). */
static void FN(fold)(int64_t C, const T *running_mean, const T *running_var, const T *weight,
                     const T *bias, double eps, T *restrict scale, T *restrict shift)
{
#pragma omp simd
    for (int64_t c = 0; c < C; c++) {
        const double w = weight ? (double)weight[c] : 1.0, b = bias ? (double)bias[c] : 0.0;
        const double s = w / sqrt((double)running_var[c] + eps);
        scale[c] = (T)s;
        shift[c] = (T)(b - (double)running_mean[c] * s);
    }
}

int FN(cbn_fold_scale_shift)(int64_t C, const T *running_mean, const T *running_var,
                             const T *weight, const T *bias, double eps, T *scale, T *shift)
{
    if (C < 0 || !(eps >= 0.0)) return CBN_ERR_ARGUMENT;
    if (C > 0 && (!running_mean || !running_var || !scale || !shift)) return CBN_ERR_ARGUMENT;
    FN(fold)(C, running_mean, running_var, weight, bias, eps, scale, shift);
    return CBN_OK;
}

int FN(cbn_infer)(const T *x, T *y, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                  const T *running_mean, const T *running_var, const T *weight, const T *bias,
                  double eps, cbn_activation activation, int n_threads)
{
    int rc = FN(check_shape)(x, y, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, NULL, 0))) return rc;
    if (!(eps >= 0.0)) return CBN_ERR_ARGUMENT;
    if (C > 0 && (!running_mean || !running_var)) return CBN_ERR_ARGUMENT;
    if (N * C * S == 0) return CBN_OK;

    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_INFER;
    jb.apply_only = 1;
    jb.x = x;
    jb.out = y;
    jb.relu = activation == CBN_ACTIVATION_RELU;
    if ((rc = FN(start_job)(&jb, N, C, S, layout, n_threads))) return rc;
    memset(jb.coef[K_CENTER], 0, sizeof(T) * (size_t)C);      /* unused by inference; defined */
    memset(jb.coef[K_B], 0, sizeof(T) * (size_t)C);
    FN(fold)(C, running_mean, running_var, weight, bias, eps, jb.coef[K_SCALE], jb.coef[K_SHIFT]);
    FN(run_job)(&jb);
    return CBN_OK;
}

/* ---- split kernels: the phases of training forward and backward, for data-parallel training
 * where the sums of several processes are combined between the phases ------------------------ */

int FN(cbn_batch_stats)(const T *x, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                        double *mean, double *m2, int n_threads)
{
    int rc = FN(check_shape)(x, x, N, C, S, layout, n_threads);
    if (rc) return rc;
    if (C > 0 && (!mean || !m2)) return CBN_ERR_ARGUMENT;
    if (C == 0) return CBN_OK;
    if (N * S == 0) {             /* no values here: the neutral element of the combination */
        memset(mean, 0, sizeof(double) * (size_t)C);
        memset(m2, 0, sizeof(double) * (size_t)C);
        return CBN_OK;
    }
    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_TRAIN;
    jb.reduce_only = 1;
    jb.x = x;
    jb.stat_a = mean;
    jb.stat_b = m2;
    if ((rc = FN(start_job)(&jb, N, C, S, layout, n_threads))) return rc;
    FN(run_job)(&jb);
    return CBN_OK;
}

int FN(cbn_normalize)(const T *x, T *y, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                      const double *mean, const double *invstd, const T *weight, const T *bias,
                      cbn_activation activation, int n_threads)
{
    int rc = FN(check_shape)(x, y, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, NULL, 0))) return rc;
    if (C > 0 && (!mean || !invstd)) return CBN_ERR_ARGUMENT;
    if (N * C * S == 0) return CBN_OK;
    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_TRAIN;
    jb.apply_only = 1;
    jb.x = x;
    jb.out = y;
    jb.weight = weight;
    jb.bias = bias;
    jb.relu = activation == CBN_ACTIVATION_RELU;
    if ((rc = FN(start_job)(&jb, N, C, S, layout, n_threads))) return rc;
    for (int64_t c = 0; c < C; c++) {
        T kc[N_COEF];
        FN(train_coefs)(&jb, c, mean[c], invstd[c], kc);
        FN(store_coefs)(&jb, c, kc);
    }
    FN(run_job)(&jb);
    return CBN_OK;
}

int FN(cbn_backward_reduce)(const T *dy, const T *x, const T *mean, const T *y,
                            cbn_activation activation, int64_t N, int64_t C, int64_t S,
                            cbn_layout layout, double *sum_dy, double *sum_dy_xmu, int n_threads)
{
    int rc = FN(check_shape)(x, dy, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, y, N * C * S))) return rc;
    if (C > 0 && (!mean || !sum_dy || !sum_dy_xmu)) return CBN_ERR_ARGUMENT;
    if (C == 0) return CBN_OK;
    if (N * S == 0) {
        memset(sum_dy, 0, sizeof(double) * (size_t)C);
        memset(sum_dy_xmu, 0, sizeof(double) * (size_t)C);
        return CBN_OK;
    }
    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_BACKWARD;
    jb.reduce_only = 1;
    jb.x = x;
    jb.dy = dy;
    jb.y = activation == CBN_ACTIVATION_RELU ? y : NULL;
    jb.in_mean = mean;
    jb.stat_a = sum_dy;
    jb.stat_b = sum_dy_xmu;
    if ((rc = FN(start_job)(&jb, N, C, S, layout, n_threads))) return rc;
    FN(run_job)(&jb);
    return CBN_OK;
}

int FN(cbn_backward_dx)(const T *dy, const T *x, const T *mean, const T *invstd, const T *weight,
                        const T *y, cbn_activation activation, const double *sum_dy,
                        const double *sum_dy_xmu, double count, T *dx, int64_t N, int64_t C,
                        int64_t S, cbn_layout layout, int n_threads)
{
    int rc = FN(check_shape)(x, dx, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, y, N * C * S))) return rc;
    if (C > 0 && (!dy || !mean || !invstd || !sum_dy || !sum_dy_xmu)) return CBN_ERR_ARGUMENT;
    if (!(count > 0.0)) return CBN_ERR_ARGUMENT;
    if (N * C * S == 0) return CBN_OK;
    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_BACKWARD;
    jb.apply_only = 1;
    jb.x = x;
    jb.dy = dy;
    jb.out = dx;
    jb.y = activation == CBN_ACTIVATION_RELU ? y : NULL;
    jb.weight = weight;
    jb.in_mean = mean;
    jb.in_invstd = invstd;
    if ((rc = FN(start_job)(&jb, N, C, S, layout, n_threads))) return rc;
    for (int64_t c = 0; c < C; c++) {
        T kc[N_COEF];
        FN(backward_coefs)(&jb, c, sum_dy[c], sum_dy_xmu[c], count, kc);
        FN(store_coefs)(&jb, c, kc);
    }
    FN(run_job)(&jb);
    return CBN_OK;
}

#undef CF_FOR_PIECES
#undef RUN_THREADS
#undef TEAM_BARRIER
#undef MULADD
#undef LANES
#undef CL_PREFETCH_COLUMNS
#undef CL_PREFETCH_BYTES
#undef GRAD
#undef FN
#undef CAT
#undef CAT_
