/* kernels_common.h - what every kernel shares, written once for both element types: the
 * build-wide macros (FN, MULADD), the job a kernel call fills in, the thread team (RUN_THREADS,
 * TEAM_BARRIER), the reduction and elementwise loops over one contiguous run, and the finalize
 * formulas that turn a channel's sums into its statistics and coefficients.
 *
 * A part of kernels_impl.h: included only there, after T, SFX and STATS_MAX_CANCEL are defined.
 */

/* a*b + c, fused (one rounding) where the CPU has FMA instructions: the sums of squares and
 * products then run on the FMA units beside the adds, and round once instead of twice. A build
 * without FMA (the x86-64-v2 level, CBN_PORTABLE) computes a*b + c; results are bit-identical
 * for any thread count within one build, and across builds that have FMA (v3, v4, native). */
#if defined(__FMA__) || defined(__aarch64__)
#define MULADD(a, b, c) fma((a), (b), (c))
#define MULADDF(a, b, c) fmaf((a), (b), (c))      /* the same in float */
#else
#define MULADD(a, b, c) ((a) * (b) + (c))
#define MULADDF(a, b, c) ((a) * (b) + (c))
#endif

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
/* Every name defined here carries the type's suffix; in the dispatched build (dispatch.c), where
 * this file is compiled once per CPU level with CBN_KERNEL_LEVEL set (v2, v3, v4), the level's
 * suffix too: cbn_infer_f32 becomes cbn_infer_f32_v3, and dispatch.c defines cbn_infer_f32. */
#ifdef CBN_KERNEL_LEVEL
#define FN(name) CAT(CAT(name, SFX), CBN_KERNEL_LEVEL)
#else
#define FN(name) CAT(name, SFX)
#endif

/* The loop bodies written once and specialized by calls with constant NULLs for the optional
 * arrays (*_body) are inlined into every specialization, whatever GCC's size estimate: with
 * 16-bit storage the conversions make them large enough that GCC kept one out-of-line copy,
 * whose loops then tested the optional arrays per element and ran scalar (float16 inference
 * took 19x float32's time, backward NHWC 5-10x). */
#if defined(__GNUC__)
#define APPLY_INLINE static inline __attribute__((always_inline))
#else
#define APPLY_INLINE static inline
#endif

/* OP_FROZEN_DX: the elementwise pass of backward through frozen statistics (the job's op is
 * then OP_BACKWARD, see apply_op). */
typedef enum { OP_TRAIN, OP_BACKWARD, OP_INFER, OP_FROZEN_DX } FN(op);

/* Per-channel coefficients of the elementwise pass, in the element type so that the pass runs at
 * full SIMD width:
 *   train:    y  = (x - center) * scale + shift     center = T(mean); shift absorbs the rounding
 *                                                    of the mean, so float32 data far from zero
 *                                                    keep their precision (x - center is exact)
 *   infer:    y  = x * scale + shift
 *   backward: dx = scale*dy + xmu*(x - center) + shift  (center = save_mean; xmu: the
 *                                                      coefficient of x - mean; shift absorbs
 *                                                      the rounding of save_mean, see
 *                                                      backward_centered)
 *   frozen backward: dx = scale*dy                 (center = running_mean, for the sums;
 *                                                    shift = xmu = 0, unused) */
enum { K_CENTER, K_SCALE, K_SHIFT, K_XMU, N_COEF };

/* Everything a kernel call reads and writes. The per-channel inputs and outputs of one op are
 * grouped under its name; in the split kernels' reduce phase (reduce_only), the per-channel
 * double sums are written instead of coefficients and outputs. */
typedef struct {
    FN(op) op;
    cbn_plan plan;
    /* the N*C*S tensors, in the storage type TS */
    const TS *x, *dy;
    const TS *y;                  /* backward through a fused ReLU: its output, else NULL */
    TS *out;                      /* y or dx */
    const TS *residual;           /* forward: added before the activation, else NULL */
    TS *d_residual;               /* backward: the residual's gradient (masked dy), else NULL */
    const T *weight, *bias;
    int relu;                     /* forward: clamp the output at 0 (fused ReLU) */
    int reduce_only, apply_only;  /* split kernels: one phase; apply_only: coef is filled in */
    struct {
        double momentum, eps;
        int unbiased_running_var;
        T *running_mean, *running_var;
        T *save_mean, *save_invstd;
        double *mean_out, *m2_out;              /* reduce_only (cbn_batch_stats) */
    } train;
    struct {
        const T *running_mean, *running_var;    /* folded tile by tile (plan.whole_tiles) */
        double eps;
    } infer;
    struct {
        const T *mean, *invstd;                 /* the forward's saved statistics */
        T *dweight, *dbias;
        double *sum_dy_out, *sum_dy_xmu_out, *sum_xmu_out;  /* reduce_only (backward_reduce) */
        /* through frozen statistics (cbn_infer_backward): mean is the running mean, invstd
         * is unused, scale = weight/sqrt(running_var + eps) */
        int frozen;
        const T *running_var;
        double eps;
    } backward;
    /* scratch */
    double *partials;             /* n_sums per chunk (channels-first) or per row block x
                                   * channel */
    double *pivot;                /* C: training's shift of each channel */
    double *sums;                 /* 2*C: channels-last channel sums, then 3*C: mean, M2 and
                                   * invstd of the vectorized finalize */
    T *coef[N_COEF];              /* C each */
    int stream;                   /* write the output with streaming stores (it exceeds cache) */
    char *column_scratch;         /* channels-first column mode: per-thread work arrays */
    /* channels-last training: channels whose one-pass sums cancelled (C flags), and whether
     * any did, so every thread joins the second pass */
    unsigned char *second_pass;
    int any_second_pass;
    int64_t next_unit;            /* units handed out at run time (take_unit) */
} FN(job);

/* Sums a reduction keeps per channel: training sum(x - pivot), sum((x - pivot)^2); backward
 * sum(g), sum(g*(x - center)), sum(x - center) (g: the gradient, center: save_mean). */
enum { TRAIN_SUMS = 2, BACKWARD_SUMS = 3 };
static inline int64_t FN(n_sums)(FN(op) op)
{
    return op == OP_BACKWARD ? BACKWARD_SUMS : TRAIN_SUMS;
}

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
            /* contention.h: the helpers' lost time, on calls long enough to pay for it */      \
            const int measure_ = (double)(jb)->plan.M * (double)(jb)->plan.C >=                 \
                                 CBN_CONTENTION_MIN_VALUES;                                     \
            const double team_start_ = measure_ ? cbn_team_start() : -1.0;                      \
            _Pragma("omp parallel num_threads(n_)")                                             \
            {                                                                                   \
                const int t_ = omp_get_thread_num(), nt_ = omp_get_num_threads();               \
                const int helper_ = t_ && team_start_ >= 0.0;                                   \
                const double cpu_ = helper_ ? cbn_thread_cpu() : -1.0;                          \
                fn(jb, t_, nt_);                                                                \
                if (helper_) cbn_helper_finished(team_start_, cpu_, nt_ - 1);                   \
            }                                                                                   \
        }                                                                                       \
    } while (0)

#define TEAM_BARRIER(nt)                                                                        \
    do {                                                                                        \
        if ((nt) > 1) {                                                                         \
            _Pragma("omp barrier")                                                              \
        }                                                                                       \
    } while (0)

/* The next unit of work (a tile, a channel group), handed out at run time so that a thread
 * that lost its core holds up nothing but the unit it is in. Which thread takes which unit
 * changes no result: a unit's sums never depend on it. (An atomic, not an OpenMP loop: a loop
 * construct would bind to a caller's team on the one-thread path.) */
static inline int64_t FN(take_unit)(FN(job) *jb)
{
    int64_t u;
#pragma omp atomic capture
    u = jb->next_unit++;
    return u;
}

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
#error "add_lanes and run_dy_sums_body are written for 32 lanes"
#endif

/* the cache lines of one step's LANES values at p */
static inline void FN(prefetch_step)(const TS *p)
{
#if defined(__GNUC__)
    /* integer arithmetic: a step at the end of an array asks for lines past it (prefetches
     * never fault), and a pointer formed there would be undefined */
    for (uintptr_t b = 0; b < LANES * sizeof(TS); b += 64)
        __builtin_prefetch((const void *)((uintptr_t)p + b), 0, 3);
#else
    (void)p;
#endif
}

/* ---- views: what the arithmetic loops read and write -------------------------------------
 * float16 storage (cbn_f16.c defines WIDEN_BLOCK) is widened a block at a time: each input is
 * widened WIDE_BUF values at a time into a float buffer on the stack (WIDE_VIEW), the loop runs
 * on the buffers as float32's runs on its arrays, and the outputs are narrowed back from a
 * buffer. The conversions then run as block loops of F16C instructions (half_convert.h)
 * instead of inside the arithmetic, where GCC converts float16 one value at a time (float16
 * inference took 3-7x float32's time). The loops see values of type TV, read through WIDEN_V
 * and written through NARROW_V: T and no conversion for float16's blocks; otherwise the
 * storage itself (WIDE_VIEW is the array), converted in the loop where bfloat16's shifts cost
 * less than a block's extra stores and loads, and not at all for T storage. Either way the
 * arithmetic, and so every bit, is float32's. */
#ifdef WIDEN_BLOCK
#define TV T
#define WIDEN_V(v) (v)
#define NARROW_V(v) (v)
#define WIDE_BUF 128
#define WIDE_STEP WIDE_BUF
#define WIDE_VIEW(buf, src, n) (WIDEN_BLOCK((src), (buf), (n)), (const TV *)(buf))
#else
#define TV TS
#define WIDEN_V(v) WIDEN(v)
#define NARROW_V(v) NARROW(v)
#define WIDE_BUF 1
#define WIDE_STEP INT64_MAX
#define WIDE_VIEW(buf, src, n) ((void)(buf), (const TV *)(src))   /* buf: unused */
#endif

/* The contiguous sums (run_shifted_sums, run_dy_sums_body) read LANES values per step through
 * LANES_VIEW: widened into a float buffer for both 16-bit types, since with the conversion
 * inside their lane-interleaved loops GCC vectorizes bfloat16 poorly too (backward's sums: 8.6
 * instructions per value, against 3 from a widened buffer). */
#ifdef NARROW_STORAGE
#define LANES_BUF LANES
#define LANES_VIEW(buf, src) (FN(widen_lanes)((src), (buf)), (const T *)(buf))
static inline void FN(widen_lanes)(const TS *restrict src, T *restrict dst)
{
#ifdef WIDEN_BLOCK
    WIDEN_BLOCK(src, dst, LANES);
#else
    for (int j = 0; j < LANES; j++) dst[j] = WIDEN(src[j]);
#endif
}
#else
#define LANES_BUF 1
#define LANES_VIEW(buf, src) ((void)(buf), (const T *)(src))   /* buf: unused */
#endif

/* ---- float blocks: how float32 (and 16-bit) values are summed -------------------------------
 * Sums are carried in double. With T = float (FLOAT_SUM_BLOCK defined by the instantiation
 * file), each lane first sums at most FLOAT_SUM_BLOCK values in float: their differences from a
 * float pivot or centre, the squares and the products with the gradient; each block's sum is
 * then added in double. Converting every value to double cost twice the arithmetic, and the sums
 * were half of every training and backward call. A block adds at most FLOAT_SUM_BLOCK roundings
 * of 2^-24 relative to the block's own magnitude, so the statistics stay within 1e-6 relative
 * (the mean within 1e-6 x std; measured up to 5e-7 by tests/test_precision.py).
 * float64 sums every value in double. Blocks lie within a run or a tile, whose bounds are fixed
 * by the shape: results stay bit-identical for every thread count. */
#ifdef FLOAT_SUM_BLOCK
#if FLOAT_SUM_BLOCK < 1 || FLOAT_SUM_BLOCK > 8
#error "FLOAT_SUM_BLOCK: 1 to 8 values per lane and block (the stated error bound)"
#endif
#endif

/* A pivot the sums can subtract in T: a training pivot moved to a channel's mean is rounded to
 * T, and the channel's shifted sums are around that value (a no-op for double). */
static inline double FN(as_pivot)(double v) { return (double)(T)v; }

/* Training's pivots (the sums are of x - pivot; see finalize): values of T near each channel's
 * values, so that little cancels. Float blocks lose 2^-24 per block relative to
 * sum((x - pivot)^2), which a pivot a few deviations out makes large against M2 (float32's
 * STATS_MAX_CANCEL is therefore small), so with them a pivot is the mean of a few values spread
 * over the channel, rounded to T: channels-last, up to 16 rows spread over the channel (one per 8
 * rows; whole rows, read across channels); channels-first, the first 4 values of up to 4 runs
 * spread over the batch (a cache line each), as many as a quarter of the channel's values at
 * most. double takes each channel's first value. A channel whose sums still cancelled too much is
 * summed again around its mean. pivot[j]: channel c0 + j, for n channels. */
static void FN(channel_pivots)(const cbn_plan *p, const TS *x, int64_t c0, int64_t n,
                               double *pivot)
{
#ifdef FLOAT_SUM_BLOCK
    const int64_t M = p->M;
    if (p->channels_last) {
        const int64_t rows = M / 8 < 1 ? 1 : M / 8 > 16 ? 16 : M / 8;
        for (int64_t j = 0; j < n; j++) pivot[j] = 0.0;
        for (int64_t k = 0; k < rows; k++) {
            const TS *restrict xr = x + M * k / rows * p->C + c0;
#pragma omp simd
            for (int64_t j = 0; j < n; j++) pivot[j] += (double)WIDEN(xr[j]);
        }
        for (int64_t j = 0; j < n; j++) pivot[j] = FN(as_pivot)(pivot[j] / (double)rows);
        return;
    }
    int64_t runs = p->N < 4 ? p->N : 4, per_run = p->S < 4 ? p->S : 4;
    if (runs * per_run > M / 4) {
        runs = 1;
        per_run = M / 4 < 1 ? 1 : M / 4 < p->S ? M / 4 : p->S;
    }
    for (int64_t j = 0; j < n; j++) {
        double sum = 0.0;
        for (int64_t k = 0; k < runs; k++) {
            const TS *run = x + (p->N * k / runs * p->C + c0 + j) * p->S;
            for (int64_t v = 0; v < per_run; v++) sum += (double)WIDEN(run[v]);
        }
        pivot[j] = FN(as_pivot)(sum / (double)(runs * per_run));
    }
#else
    for (int64_t j = 0; j < n; j++)
        pivot[j] = (double)WIDEN(x[p->channels_last ? c0 + j : (c0 + j) * p->S]);
#endif
}

/* The LANES values of a, added pairwise (half of them onto the other half, and again): a short
 * dependency chain, since runs can be short. Constant bounds throughout, so the lanes stay in
 * registers. */
static inline double FN(sum_lanes)(const double *a)
{
    double a16[16], a8[8], a4[4];
    for (int j = 0; j < 16; j++) a16[j] = a[j] + a[j + 16];
    for (int j = 0; j < 8; j++) a8[j] = a16[j] + a16[j + 8];
    for (int j = 0; j < 4; j++) a4[j] = a8[j] + a8[j + 4];
    return (a4[0] + a4[2]) + (a4[1] + a4[3]);
}

/* s[0] += the lanes of a plus ta, s[1] += those of q plus tq. */
static inline void FN(add_lanes)(const double *a, const double *q, double ta, double tq,
                                 double *s)
{
    s[0] += FN(sum_lanes)(a) + ta;
    s[1] += FN(sum_lanes)(q) + tq;
}

#ifdef FLOAT_SUM_BLOCK
/* The contiguous sums in float blocks (see FLOAT_SUM_BLOCK). A step of LANES values puts two
 * into each of FLANES float lanes; FLOAT_SUM_BLOCK / 2 steps make a block, whose lanes are then
 * added to FLANES double lanes. Half-width lanes keep every accumulator in registers with
 * AVX2's 16, and short runs pay little to start and end: of the last n % LANES values, FLANES
 * go to the double lanes in one vector step, and only the rest one by one. */
#define FLANES (LANES / 2)
#define FLOAT_BLOCK_STEPS (FLOAT_SUM_BLOCK / 2)

/* the FLANES values of a, added pairwise */
static inline double FN(sum_flanes)(const double *a)
{
    double a8[8], a4[4];
    for (int j = 0; j < 8; j++) a8[j] = a[j] + a[j + 8];
    for (int j = 0; j < 4; j++) a4[j] = a8[j] + a8[j + 4];
    return (a4[0] + a4[2]) + (a4[1] + a4[3]);
}

/* A block's float lanes into the double lanes. */
static inline void FN(carry_flanes)(const T *restrict f, double *restrict a)
{
#pragma omp simd
    for (int j = 0; j < FLANES; j++) a[j] += (double)f[j];
}

/* The end of the block that starts at i: FLOAT_BLOCK_STEPS whole steps, or those left. */
static inline int64_t FN(block_end)(int64_t i, int64_t n)
{
    return n - i > FLOAT_BLOCK_STEPS * LANES ? i + FLOAT_BLOCK_STEPS * LANES : n;
}

/* run_shifted_sums in float blocks. pivot: a float value (as_pivot). */
static void FN(run_shifted_floats)(const TS *restrict p, int64_t n, double pivot, int64_t ahead,
                                   double *s)
{
    const T pf = (T)pivot;
    double a[FLANES] = {0.0}, q[FLANES] = {0.0};
    T pb[LANES_BUF];
    int64_t i = 0;
    while (i + LANES <= n) {
        T fa[FLANES] = {0}, fq[FLANES] = {0};
        for (const int64_t end = FN(block_end)(i, n); i + LANES <= end; i += LANES) {
            if (ahead) FN(prefetch_step)(p + i + ahead);
            const T *restrict pw = LANES_VIEW(pb, p + i);
#pragma omp simd
            for (int j = 0; j < FLANES; j++) {
                const T d0 = pw[j] - pf, d1 = pw[j + FLANES] - pf;
                fa[j] += d0 + d1;
                fq[j] += MULADDF(d1, d1, d0 * d0);
            }
        }
        FN(carry_flanes)(fa, a);
        FN(carry_flanes)(fq, q);
    }
    if (i + FLANES <= n) {               /* half a step, in double */
#pragma omp simd
        for (int j = 0; j < FLANES; j++) {
            const double d = (double)WIDEN(p[i + j]) - pivot;
            a[j] += d;
            q[j] = MULADD(d, d, q[j]);
        }
        i += FLANES;
    }
    double ta = 0.0, tq = 0.0;           /* the last values, in double */
    for (; i < n; i++) {
        const double d = (double)WIDEN(p[i]) - pivot;
        ta += d;
        tq = MULADD(d, d, tq);
    }
    s[0] += FN(sum_flanes)(a) + ta;
    s[1] += FN(sum_flanes)(q) + tq;
}
#endif

/* s[0] += sum(x - pivot), s[1] += sum((x - pivot)^2); exact: in double only (no float blocks) */
static void FN(run_shifted_sums)(const TS *restrict p, int64_t n, double pivot, int64_t ahead,
                                 int exact, double *s)
{
#ifdef FLOAT_SUM_BLOCK
    if (!exact) {
        FN(run_shifted_floats)(p, n, pivot, ahead, s);
        return;
    }
#else
    (void)exact;
#endif
    double a[LANES] = {0.0}, q[LANES] = {0.0};
    int64_t i = 0;
    T pb[LANES_BUF];
    for (; i + LANES <= n; i += LANES) {
        if (ahead) FN(prefetch_step)(p + i + ahead);
        const T *restrict pw = LANES_VIEW(pb, p + i);
#pragma omp simd
        for (int j = 0; j < LANES; j++) {
            const double d = (double)pw[j] - pivot;
            a[j] += d;
            q[j] = MULADD(d, d, q[j]);
        }
    }
    double ta = 0.0, tq = 0.0;           /* the last n % LANES values */
    for (; i < n; i++) {
        const double d = (double)WIDEN(p[i]) - pivot;
        ta += d;
        tq = MULADD(d, d, tq);
    }
    FN(add_lanes)(a, q, ta, tq, s);
}

/* The gradient reaching batch norm: dy, or dy where y > 0 and 0 elsewhere when a fused ReLU
 * produced y (y == NULL: no activation). */
static inline T FN(relu_grad)(T dy, T y) { return y > 0 ? dy : (T)0; }
/* Both values are loaded unconditionally, so the select vectorizes as a blend. */
#define GRAD(dy, y, i) ((y) ? FN(relu_grad)(WIDEN((dy)[i]), WIDEN((y)[i])) : WIDEN((dy)[i]))
/* the same on views (WIDE_VIEW) */
#define GRAD_V(dy, y, i) ((y) ? FN(relu_grad)(WIDEN_V((dy)[i]), WIDEN_V((y)[i])) : WIDEN_V((dy)[i]))

/* s[0] += sum(g), s[1] += sum(g * (x - center)), s[2] += sum(x - center), g = GRAD(dy, y).
 * Element i goes to lane i % LANES of the first two sums, and to lane i % D_LANES of the third:
 * 32 more lanes would not fit beside the others in 16 AVX2 registers, and the spills cost a
 * quarter more instructions in this loop (8 lanes: 12% more for the whole backward). Written
 * once; the call below specializes it for y == NULL and y != NULL, so the mask costs nothing
 * without activation. */
#define D_LANES 8

/* the cache lines of one step of the backward sums, `at` values on */
static inline void FN(prefetch_dy_step)(const TS *dy, const TS *y, const TS *x, int64_t at)
{
    FN(prefetch_step)(dy + at);
    FN(prefetch_step)(x + at);
    if (y) FN(prefetch_step)(y + at);
}

#ifdef FLOAT_SUM_BLOCK
/* The backward sums in float blocks (see run_shifted_floats), in parts that a run
 * (run_dy_floats) and a chunk of short runs (cf_dy_chunk_carried) both put together: a step
 * of LANES values into the float lanes fa, fq, fd; a block's float lanes carried into the
 * double lanes a, q, d (the third sum's double lanes take two float lanes each); a run's last
 * values into the double lanes and t[]; and the lanes added up. center: a value of T (the saved
 * mean). */
APPLY_INLINE void FN(dy_float_step)(const TS *restrict dy, const TS *restrict y,
                                     const TS *restrict x, int64_t i, T cf, T *restrict fa,
                                     T *restrict fq, T *restrict fd)
{
    T dyb[LANES_BUF], yb[LANES_BUF], xb[LANES_BUF];
    const T *restrict dyw = LANES_VIEW(dyb, dy + i);
    const T *restrict xw = LANES_VIEW(xb, x + i);
    const T *restrict yw = y ? LANES_VIEW(yb, y + i) : NULL;
#pragma omp simd
    for (int j = 0; j < FLANES; j++) {
        const int k = j + FLANES;
        const T g0 = yw ? FN(relu_grad)(dyw[j], yw[j]) : dyw[j],
                g1 = yw ? FN(relu_grad)(dyw[k], yw[k]) : dyw[k];
        const T e0 = xw[j] - cf, e1 = xw[k] - cf;
        fa[j] += g0 + g1;
        fq[j] += MULADDF(g1, e1, g0 * e0);
        fd[j] += e0 + e1;
    }
}

/* a block's float lanes into the double lanes; the float lanes start again from 0 */
APPLY_INLINE void FN(carry_dy_block)(T *restrict fa, T *restrict fq, T *restrict fd,
                                      double *restrict a, double *restrict q,
                                      double *restrict d)
{
    FN(carry_flanes)(fa, a);
    FN(carry_flanes)(fq, q);
    for (int j = 0; j < D_LANES; j++) d[j] += (double)fd[j] + (double)fd[j + D_LANES];
    for (int j = 0; j < FLANES; j++) fa[j] = fq[j] = fd[j] = 0;
}

/* Values [i, n) of a run, fewer than LANES: half a step into the double lanes, the rest one by
 * one into t[0..2]; all in double. */
APPLY_INLINE void FN(dy_run_tail)(const TS *restrict dy, const TS *restrict y,
                                   const TS *restrict x, int64_t i, int64_t n, double center,
                                   double *restrict a, double *restrict q, double *restrict d,
                                   double *restrict t)
{
    if (i + FLANES <= n) {
#pragma omp simd
        for (int j = 0; j < D_LANES; j++) {
            const int k = j + D_LANES;
            const double g0 = (double)GRAD(dy, y, i + j), g1 = (double)GRAD(dy, y, i + k);
            const double e0 = (double)WIDEN(x[i + j]) - center,
                         e1 = (double)WIDEN(x[i + k]) - center;
            a[j] += g0;
            a[k] += g1;
            q[j] = MULADD(g0, e0, q[j]);
            q[k] = MULADD(g1, e1, q[k]);
            d[j] += e0 + e1;
        }
        i += FLANES;
    }
    double ta = t[0], tq = t[1], td = t[2];
    for (; i < n; i++) {
        const double g = (double)GRAD(dy, y, i), e = (double)WIDEN(x[i]) - center;
        ta += g;
        tq = MULADD(g, e, tq);
        td += e;
    }
    t[0] = ta;
    t[1] = tq;
    t[2] = td;
}

/* s[i] += the lanes of sum i */
APPLY_INLINE void FN(add_dy_lanes)(const double *a, const double *q, const double *d,
                                    const double *t, double *s)
{
    s[0] += FN(sum_flanes)(a) + t[0];
    s[1] += FN(sum_flanes)(q) + t[1];
    s[2] += (((d[0] + d[4]) + (d[2] + d[6])) + ((d[1] + d[5]) + (d[3] + d[7]))) + t[2];
}

/* run_dy_sums_body in float blocks: a block is FLOAT_BLOCK_STEPS steps of this run */
APPLY_INLINE void FN(run_dy_floats)(const TS *restrict dy, const TS *restrict y,
                                     const TS *restrict x, int64_t n, double center,
                                     int64_t ahead, double *s)
{
    const T cf = (T)center;
    double a[FLANES] = {0.0}, q[FLANES] = {0.0}, d[D_LANES] = {0.0}, t[BACKWARD_SUMS] = {0.0};
    T fa[FLANES] = {0}, fq[FLANES] = {0}, fd[FLANES] = {0};
    int64_t i = 0;
    while (i + LANES <= n) {
        for (const int64_t end = FN(block_end)(i, n); i + LANES <= end; i += LANES) {
            if (ahead) FN(prefetch_dy_step)(dy, y, x, i + ahead);
            FN(dy_float_step)(dy, y, x, i, cf, fa, fq, fd);
        }
        FN(carry_dy_block)(fa, fq, fd, a, q, d);
    }
    FN(dy_run_tail)(dy, y, x, i, n, center, a, q, d, t);
    FN(add_dy_lanes)(a, q, d, t, s);
}
#endif

APPLY_INLINE void FN(run_dy_sums_body)(const TS *restrict dy, const TS *restrict y,
                                        const TS *restrict x, int64_t n, double center,
                                        int64_t ahead, int exact, double *s)
{
#ifdef FLOAT_SUM_BLOCK
    if (!exact) {
        FN(run_dy_floats)(dy, y, x, n, center, ahead, s);
        return;
    }
#else
    (void)exact;
#endif
    double a[LANES] = {0.0}, q[LANES] = {0.0}, d[D_LANES] = {0.0};
    T dyb[LANES_BUF], yb[LANES_BUF], xb[LANES_BUF];
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        if (ahead) FN(prefetch_dy_step)(dy, y, x, i + ahead);
        const T *restrict dyw = LANES_VIEW(dyb, dy + i);
        const T *restrict xw = LANES_VIEW(xb, x + i);
        const T *restrict yw = y ? LANES_VIEW(yb, y + i) : NULL;
#pragma omp simd
        for (int j = 0; j < D_LANES; j++) {
            double e[LANES / D_LANES];
            for (int k = 0; k < LANES / D_LANES; k++) {
                const int l = j + D_LANES * k;
                const double g = (double)(yw ? FN(relu_grad)(dyw[l], yw[l]) : dyw[l]);
                e[k] = (double)xw[l] - center;
                a[l] += g;
                q[l] = MULADD(g, e[k], q[l]);
            }
            d[j] += (e[0] + e[1]) + (e[2] + e[3]);
        }
    }
    double ta = 0.0, tq = 0.0, td = 0.0;     /* the last n % LANES values */
    for (; i < n; i++) {
        const double g = (double)GRAD(dy, y, i), e = (double)WIDEN(x[i]) - center;
        ta += g;
        tq = MULADD(g, e, tq);
        td += e;
    }
    FN(add_lanes)(a, q, ta, tq, s);
    s[2] += (((d[0] + d[4]) + (d[2] + d[6])) + ((d[1] + d[5]) + (d[3] + d[7]))) + td;
}

static void FN(run_dy_sums)(const TS *dy, const TS *y, const TS *x, int64_t n, double center,
                            int64_t ahead, int exact, double *s)
{
    if (y) FN(run_dy_sums_body)(dy, y, x, n, center, ahead, exact, s);
    else FN(run_dy_sums_body)(dy, NULL, x, n, center, ahead, exact, s);
}

/* The elementwise pass's arithmetic, written once for each of its loops (a run with one
 * channel's coefficients, a channels-last row with one per column, float16's vectors): xv the
 * widened input, g the gradient reaching batch norm. */
#define TRAIN_VALUE(xv, center, scale, shift) (((xv) - (center)) * (scale) + (shift))
#define INFER_VALUE(xv, scale, shift) ((xv) * (scale) + (shift))
#define BACKWARD_VALUE(g, xv, center, scale, shift, xmu)                                       \
    ((scale) * (g) + (xmu) * ((xv) - (center)) + (shift))
#define FROZEN_DX_VALUE(g, scale) ((scale) * (g))

/* The arithmetic of one run of the elementwise pass, on views (the arrays themselves, or a
 * widened block); see run_apply_body. */
APPLY_INLINE void FN(apply_view)(FN(op) op, int relu, const TV *x, const TV *dy, const TV *y,
                                  const TV *res, TV *out, TV *dres, int64_t n, const T *coefs)
{
    const T center = coefs[K_CENTER], scale = coefs[K_SCALE], shift = coefs[K_SHIFT],
            xmu = coefs[K_XMU];
    /* one loop per op (not a select inside one): a conditional read of x is control flow,
     * which GCC does not vectorize with 16-bit conversions */
    if (op == OP_FROZEN_DX) {        /* frozen statistics: dx depends on neither the sums nor x */
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const T g = GRAD_V(dy, y, i);
            out[i] = NARROW_V(FROZEN_DX_VALUE(g, scale));
            if (dres) dres[i] = NARROW_V(g);
        }
        return;
    }
    if (op == OP_BACKWARD) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const T g = GRAD_V(dy, y, i);
            out[i] = NARROW_V(BACKWARD_VALUE(g, WIDEN_V(x[i]), center, scale, shift, xmu));
            if (dres) dres[i] = NARROW_V(g);
        }
        return;
    }
    const T lo = relu ? (T)0 : (T)-INFINITY;     /* v < -inf never holds: no clamp */
    if (op == OP_INFER) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            T v = INFER_VALUE(WIDEN_V(x[i]), scale, shift);
            if (res) v = v + WIDEN_V(res[i]);
            out[i] = NARROW_V(v < lo ? lo : v);
        }
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            T v = TRAIN_VALUE(WIDEN_V(x[i]), center, scale, shift);
            if (res) v = v + WIDEN_V(res[i]);
            out[i] = NARROW_V(v < lo ? lo : v);
        }
    }
}

#if defined(HALF_VEC_LOAD_N) && defined(CBN_HALF_VECTORS)
#define HALF_VECTORS     /* 16-bit storage's elementwise pass in vectors (half_vectors.h) */
/* One vector of the elementwise pass in 16-bit storage: the k values from i (a whole vector,
 * or with AVX-512 masks fewer), converted in registers (HALF_VEC_LOAD_N, HALF_VEC_STORE_N:
 * the storage type's, from its cbn_*.c). Coefficients: coef[k][i] per value (cstep 1: a
 * channels-last row) or coef[k][0] for all (cstep 0: a run of one channel). The vector's inputs
 * are loaded before its outputs are stored, so the aliasing allowed in run_apply_body is too. */
APPLY_INLINE void FN(half_vector_step)(FN(op) op, cbn_half_vec lo, const T *const *coef,
                                       int cstep, const TS *x, const TS *dy, const TS *y,
                                       const TS *res, TS *out, TS *dres, int64_t i, int64_t k)
{
    typedef cbn_half_vec V;
#define LOAD(p) HALF_VEC_LOAD_N((p) + i, k)
#define COEF(c) (cstep ? cbn_half_vec_floats_n(coef[c] + i, k) : cbn_half_vec_set1(coef[c][0]))
    if (op == OP_FROZEN_DX || op == OP_BACKWARD) {
        const V g = y ? cbn_half_vec_relu_grad(LOAD(dy), LOAD(y)) : LOAD(dy);
        const V dx = op == OP_FROZEN_DX
                         ? FROZEN_DX_VALUE(g, COEF(K_SCALE))
                         : BACKWARD_VALUE(g, LOAD(x), COEF(K_CENTER), COEF(K_SCALE),
                                          COEF(K_SHIFT), COEF(K_XMU));
        HALF_VEC_STORE_N(out + i, dx, k);
        if (dres) HALF_VEC_STORE_N(dres + i, g, k);
        return;
    }
    V v = op == OP_INFER ? INFER_VALUE(LOAD(x), COEF(K_SCALE), COEF(K_SHIFT))
                         : TRAIN_VALUE(LOAD(x), COEF(K_CENTER), COEF(K_SCALE), COEF(K_SHIFT));
    if (res) v = v + LOAD(res);
    HALF_VEC_STORE_N(out + i, cbn_half_vec_clamp(v, lo), k);
#undef LOAD
#undef COEF
}

/* The elementwise pass in 16-bit vectors (half_vector_step) over values [0, n), or without
 * masks over the whole vectors only; returns how many values it did, leaving the rest to the
 * scalar loops (or float16's blocks). Whole vectors and the masked last one are two compiled
 * copies of the arithmetic, and GCC may order the operands of + and * differently in each:
 * where two NaNs meet, whose sign and payload come out can then depend on where a value sits
 * (README: NaN/Inf). Every path through one copy (masked loads and stores for whole vectors
 * too) took 1.3-1.4x the time of float16 inference in cache. */
APPLY_INLINE int64_t FN(apply_half_vectors)(FN(op) op, int relu, const T *const *coef,
                                             int cstep, const TS *x, const TS *dy, const TS *y,
                                             const TS *res, TS *out, TS *dres, int64_t n)
{
    const cbn_half_vec lo = cbn_half_vec_set1(relu ? 0.0f : -INFINITY);
    int64_t i = 0;
    for (; i + CBN_HALF_VEC <= n; i += CBN_HALF_VEC)
        FN(half_vector_step)(op, lo, coef, cstep, x, dy, y, res, out, dres, i, CBN_HALF_VEC);
#ifdef CBN_HALF_VEC_MASKED
    if (i < n) {
        FN(half_vector_step)(op, lo, coef, cstep, x, dy, y, res, out, dres, i, n - i);
        i = n;
    }
#endif
    return i;
}
#endif

#ifdef WIDEN_BLOCK
/* Buffers for one block of the elementwise pass in float16 storage: the op's inputs widened,
 * its outputs before narrowing. */
typedef struct {
    T x[WIDE_BUF], dy[WIDE_BUF], y[WIDE_BUF], res[WIDE_BUF], out[WIDE_BUF], dres[WIDE_BUF];
} FN(wide_block);

/* Widens the m values of what op reads (NULL for what it does not) into b; sets the views. */
APPLY_INLINE void FN(widen_apply_inputs)(FN(op) op, FN(wide_block) *b, const TS *x,
                                         const TS *dy, const TS *y, const TS *res, int64_t m,
                                         const T **xw, const T **dyw, const T **yw,
                                         const T **resw)
{
    *xw = op != OP_FROZEN_DX ? WIDE_VIEW(b->x, x, m) : NULL;
    *dyw = op == OP_BACKWARD || op == OP_FROZEN_DX ? WIDE_VIEW(b->dy, dy, m) : NULL;
    *yw = y ? WIDE_VIEW(b->y, y, m) : NULL;
    *resw = res ? WIDE_VIEW(b->res, res, m) : NULL;
}

/* Narrows the block's outputs (dres: NULL when there is none) */
APPLY_INLINE void FN(narrow_apply_outputs)(const FN(wide_block) *b, TS *out, TS *dres,
                                           int64_t m)
{
    NARROW_BLOCK(b->out, out, m);
    if (dres) NARROW_BLOCK(b->dres, dres, m);
}
#endif

/* One run of the elementwise pass; out may be x (or dy). relu: clamp the output at 0 (NaN
 * stays NaN); y: the mask of a fused ReLU in backward. Forward: res (or NULL) is a residual
 * added before the clamp, y = relu(bn(x) + res); backward: dres (or NULL) receives the masked
 * gradient g, which is also the residual's gradient. Each element's inputs are read before its
 * outputs are written, so out may be res (forward) or dy (backward), and dres may be dy (a
 * float16 block is widened whole before any of it is written). */
APPLY_INLINE void FN(run_apply_body)(FN(op) op, int relu, const TS *x, const TS *dy,
                                      const TS *y, const TS *res, TS *out, TS *dres, int64_t n,
                                      const T *coefs)
{
    int64_t i = 0;
#ifdef HALF_VECTORS
    const T *coef[N_COEF];
    for (int k = 0; k < N_COEF; k++) coef[k] = coefs + k;
    i = FN(apply_half_vectors)(op, relu, coef, 0, x, dy, y, res, out, dres, n);
    if (i == n) return;
#endif
#ifdef WIDEN_BLOCK
    FN(wide_block) b;
    for (; i < n; i += WIDE_BUF) {
        const int64_t m = n - i < WIDE_BUF ? n - i : WIDE_BUF;
        const T *xw, *dyw, *yw, *resw;
        FN(widen_apply_inputs)(op, &b, x + i, dy ? dy + i : NULL, y ? y + i : NULL,
                               res ? res + i : NULL, m, &xw, &dyw, &yw, &resw);
        FN(apply_view)(op, relu, xw, dyw, yw, resw, b.out, dres ? b.dres : NULL, m, coefs);
        FN(narrow_apply_outputs)(&b, out + i, dres ? dres + i : NULL, m);
    }
#else
    FN(apply_view)(op, relu, x + i, dy ? dy + i : NULL, y ? y + i : NULL, res ? res + i : NULL,
                   out + i, dres ? dres + i : NULL, n - i, coefs);
#endif
}

/* run_apply_body specialized for each combination of the optional arrays, so that none costs
 * a test per element when absent (the calls with constant NULLs fold it away). */
static inline void FN(run_apply)(FN(op) op, int relu, const TS *x, const TS *dy, const TS *y,
                                 const TS *res, TS *out, TS *dres, int64_t n, const T *coefs)
{
    if (y) {
        if (dres) FN(run_apply_body)(op, relu, x, dy, y, NULL, out, dres, n, coefs);
        else FN(run_apply_body)(op, relu, x, dy, y, NULL, out, NULL, n, coefs);
    } else if (dres) {
        FN(run_apply_body)(op, relu, x, dy, NULL, NULL, out, dres, n, coefs);
    } else if (res) {
        FN(run_apply_body)(op, relu, x, dy, NULL, res, out, NULL, n, coefs);
    } else {
        FN(run_apply_body)(op, relu, x, dy, NULL, NULL, out, NULL, n, coefs);
    }
}

/* The op of the elementwise pass: backward through frozen statistics reduces as backward does
 * but applies dx = scale*g. */
static inline FN(op) FN(apply_op)(const FN(job) *jb)
{
    return jb->backward.frozen ? OP_FROZEN_DX : jb->op;
}

/* ---- finalize: a channel's summed partials -> coefficients and per-channel outputs --------- */

/* Statistics. Training sums d = x - pivot and d^2 with the pivot the channel's first value, so
 * partials simply add up. That is exact unless the pivot lies far from the mean: then sum(d^2)
 * dwarfs M2 = sum((x - mean)^2) and digits cancel. When more than a factor STATS_MAX_CANCEL of
 * the magnitude would cancel, the channel is summed again around its mean (a true two-pass),
 * which cancels nothing. float keeps about 2^-28 relative accuracy in M2 this way, double 2^-44.
 */

/* Channel c's coefficients: into the job's per-channel arrays, and back out. */
static inline void FN(store_coefs)(const FN(job) *jb, int64_t c, const T *coefs)
{
    for (int i = 0; i < N_COEF; i++) jb->coef[i][c] = coefs[i];
}

static inline void FN(load_coefs)(const FN(job) *jb, int64_t c, T *coefs)
{
    for (int i = 0; i < N_COEF; i++) coefs[i] = jb->coef[i][c];
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

static inline int FN(train_cancelled)(double q, double m2)
{
#ifdef FLOAT_SUM_BLOCK
    if (!(fabs(q) <= DBL_MAX)) return 1;   /* inf or NaN: a float block may have overflowed */
#endif
    return q > STATS_MAX_CANCEL * m2;
}

/* The pivot of a channel's second sum: its mean (as_pivot), or the first pass's pivot when the
 * mean is not finite (float blocks that overflowed: the second sum, in double, starts over). */
static inline double FN(second_pivot)(double pivot, double mean)
{
    return fabs(mean) <= DBL_MAX ? FN(as_pivot)(mean) : pivot;
}

/* Whether the n sums at s are finite; a backward whose float blocks overflowed (or whose data
 * is not finite) sums the channel again in double. Always 1 without float blocks. */
static inline int FN(sums_finite)(const double *s, int64_t n)
{
#ifdef FLOAT_SUM_BLOCK
    int finite = 1;
    for (int64_t i = 0; i < n; i++) finite &= fabs(s[i]) <= DBL_MAX;
    return finite;
#else
    (void)s, (void)n;
    return 1;
#endif
}

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

/* Coefficients of y = (x - mean)*invstd*w + beta (w, beta: the channel's weight and bias). */
static inline void FN(train_coef_values)(double w, double beta, double mean, double invstd,
                                         T *center, T *scale, T *shift)
{
    const double sc = w * invstd;
    *center = (T)mean;
    *scale = (T)sc;
    *shift = (T)(beta - (mean - (double)*center) * sc);
}

static inline void FN(train_coefs)(const FN(job) *jb, int64_t c, double mean, double invstd,
                                   T *coefs)
{
    FN(train_coef_values)(jb->weight ? (double)jb->weight[c] : 1.0,
                          jb->bias ? (double)jb->bias[c] : 0.0, mean, invstd, &coefs[K_CENTER],
                          &coefs[K_SCALE], &coefs[K_SHIFT]);
    coefs[K_XMU] = 0;
}

/* Backward sums around the centre the reduction used, save_mean as stored in T, which is off
 * the batch's mean by up to half a unit in its last place: float32 data at 1e6 would lose
 * 2 digits of dweight. The reduction also sums x - center (each difference exact for data near
 * its mean), so the true mean is center + delta, delta = sum_xc / M, and
 *   sum(g*(x - mean)) = sum(g*(x - center)) - delta*sum(g)
 * (returned; *delta written). */
static inline double FN(backward_centered)(double sum_dy, double sum_dy_xc, double sum_xc,
                                           double M, double *delta)
{
    *delta = sum_xc / M;
    return sum_dy_xc - *delta * sum_dy;
}

/* Coefficients of dx = scale*dy + xmu*(x - center) + shift from a channel's weight w, invstd
 * and its sums around center over all M values (shared by backward_coefs and the vectorized
 * finalize): dx = a*g + k*(x - mean) - a*sum_dy/M with x - mean = (x - center) - delta. */
static inline void FN(backward_coef_values)(double w, double invstd, double sum_dy,
                                            double sum_dy_xc, double sum_xc, double M, T *scale,
                                            T *shift, T *xmu)
{
    double delta;
    const double sum_dy_xmu = FN(backward_centered)(sum_dy, sum_dy_xc, sum_xc, M, &delta);
    const double a = w * invstd, k = -a * invstd * invstd * sum_dy_xmu / M;
    *scale = (T)a;
    *shift = (T)(-a * sum_dy / M - k * delta);
    *xmu = (T)k;
}

/* Coefficients of dx for channel c from the sums s (BACKWARD_SUMS) over all M values. */
static void FN(backward_coefs)(const FN(job) *jb, int64_t c, const double *s, double M,
                               T *coefs)
{
    coefs[K_CENTER] = jb->backward.mean[c];
    FN(backward_coef_values)(jb->weight ? (double)jb->weight[c] : 1.0,
                             (double)jb->backward.invstd[c], s[0], s[1], s[2], M,
                             &coefs[K_SCALE], &coefs[K_SHIFT], &coefs[K_XMU]);
}

/* Training. s = sum(x - pivot), q = sum((x - pivot)^2) over the channel's M values. Returns 1
 * (and writes nothing) when too much cancelled and the channel must be summed again around
 * `*mean_out`; `accept` forces a result (used for that second sum). */
static int FN(finalize_train)(const FN(job) *jb, int64_t c, double pivot, double s, double q,
                              int accept, int write_outputs, T *coefs, double *mean_out)
{
    const double M = (double)jb->plan.M;
    double mean;
    const double m2 = FN(train_m2)(pivot, s, q, M, &mean);
    *mean_out = mean;
    if (!accept && FN(train_cancelled)(q, m2)) return 1;
    const double var = FN(train_var)(m2, M);
    const double invstd = FN(train_invstd)(var, jb->train.eps);
    FN(train_coefs)(jb, c, mean, invstd, coefs);
    if (!write_outputs) return 0;
    if (jb->train.mean_out) {
        jb->train.mean_out[c] = mean;
        jb->train.m2_out[c] = FN(clamped_m2)(m2);
    }
    if (jb->train.save_mean) jb->train.save_mean[c] = (T)mean;
    if (jb->train.save_invstd) jb->train.save_invstd[c] = (T)invstd;
    if (jb->train.running_mean) {
        jb->train.running_mean[c] =
            FN(momentum_update)(jb->train.running_mean[c], jb->train.momentum, mean);
        jb->train.running_var[c] = FN(momentum_update)(
            jb->train.running_var[c], jb->train.momentum,
            FN(running_var_estimate)(jb->train.unbiased_running_var, m2, var, M));
    }
    return 0;
}

/* Backward through frozen statistics, channel c: root = sqrt(running_var + eps) in double,
 * scale = weight/root (inference's scale, same bits), dweight = sum(g*(x - running_mean))/root,
 * dbias = sum(g). */
static inline void FN(frozen_coef_values)(double w, double running_var, double eps,
                                          double sum_dy, double sum_dy_xmu, T *scale,
                                          T *dweight, T *dbias)
{
    const double root = sqrt(running_var + eps);
    *scale = (T)(w / root);
    *dweight = (T)(sum_dy_xmu / root);
    *dbias = (T)sum_dy;
}

static void FN(finalize_frozen)(const FN(job) *jb, int64_t c, double sum_dy, double sum_dy_xmu,
                                int write_outputs, T *coefs)
{
    T dweight, dbias;
    FN(frozen_coef_values)(jb->weight ? (double)jb->weight[c] : 1.0,
                           (double)jb->backward.running_var[c], jb->backward.eps, sum_dy,
                           sum_dy_xmu, &coefs[K_SCALE], &dweight, &dbias);
    coefs[K_CENTER] = jb->backward.mean[c];
    coefs[K_SHIFT] = coefs[K_XMU] = 0;
    if (!write_outputs) return;
    if (jb->backward.dweight) jb->backward.dweight[c] = dweight;
    if (jb->backward.dbias) jb->backward.dbias[c] = dbias;
}

/* Backward. s: sum(g), sum(g*(x - center)), sum(x - center) over the channel (frozen: the
 * center is the running mean itself, the third sum is not needed). */
static void FN(finalize_backward)(const FN(job) *jb, int64_t c, const double *s,
                                  int write_outputs, T *coefs)
{
    if (jb->backward.frozen) {
        FN(finalize_frozen)(jb, c, s[0], s[1], write_outputs, coefs);
        return;
    }
    if (jb->reduce_only) {          /* the caller combines the sums across processes */
        for (int i = 0; i < N_COEF; i++) coefs[i] = 0;
        if (write_outputs) {
            jb->backward.sum_dy_out[c] = s[0];
            jb->backward.sum_dy_xmu_out[c] = s[1];
            jb->backward.sum_xmu_out[c] = s[2];
        }
        return;
    }
    const double M = (double)jb->plan.M;
    FN(backward_coefs)(jb, c, s, M, coefs);
    if (!write_outputs) return;
    double delta;
    const double sum_dy_xmu = FN(backward_centered)(s[0], s[1], s[2], M, &delta);
    const double invstd = (double)jb->backward.invstd[c];
    if (jb->backward.dweight) jb->backward.dweight[c] = (T)(sum_dy_xmu * invstd);
    if (jb->backward.dbias) jb->backward.dbias[c] = (T)s[0];
}

/* scale = weight/sqrt(var + eps), shift = bias - mean*scale for C channels, computed in double
 * and stored in T (one vectorized loop: once per inference call, or once per column tile). */
static void FN(fold)(int64_t C, const T *running_mean, const T *running_var, const T *weight,
                     const T *bias, double eps, T *restrict scale, T *restrict shift)
{
#pragma omp simd
    for (int64_t c = 0; c < C; c++) {
        const double w = weight ? (double)weight[c] : 1.0, beta = bias ? (double)bias[c] : 0.0;
        const double s = w / sqrt((double)running_var[c] + eps);
        scale[c] = (T)s;
        shift[c] = (T)(beta - (double)running_mean[c] * s);
    }
}
