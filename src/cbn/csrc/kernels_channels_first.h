/* kernels_channels_first.h - the kernels' three phases for channels-first data (x[n][c][s]).
 *
 * A part of kernels_impl.h (after kernels_common.h and kernels_channels_last.h, whose row loops
 * the short-run column mode reuses).
 */

/* ---- channels-first ------------------------------------------------------------------------
 * Channel c holds N runs of S contiguous values, run n at offset (n*C + c)*S. Its M = N*S values,
 * numbered m = n*S + s, are cut into K chunks of plan.chunk values; chunk k of channel c is unit
 * u = c*K + k and owns the n_sums partials from part[n_sums*u]. A chunk's partials are
 * accumulated over its pieces (a run cut at chunk bounds) in increasing m whichever traversal
 * visits them, and a channel's chunks are added in increasing k, so nothing depends on how work
 * was spread. */

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

/* Sums of one piece; ahead: see the run primitives; exact: in double only (a second sum). */
static inline void FN(cf_reduce_piece)(const FN(job) *jb, int64_t c, int64_t off, int64_t len,
                                       double pivot, int64_t ahead, int exact, double *acc)
{
    if (jb->op == OP_TRAIN) FN(run_shifted_sums)(jb->x + off, len, pivot, ahead, exact, acc);
    else FN(run_dy_sums)(jb->dy + off, jb->y ? jb->y + off : NULL, jb->x + off, len,
                         (double)jb->backward.mean[c], ahead, exact, acc);
}

/* Distance from a piece at `off` to the same place in the next run of its channel, or 0 when it
 * is in the last run. */
static inline int64_t cf_next_run(const cbn_plan *p, int64_t off)
{
    return off / (p->C * p->S) + 1 < p->N ? p->C * p->S : 0;
}

/* The `ahead` of a piece at `off`: the next run, when the data is large (plan.prefetch). */
static inline int64_t cf_ahead(const cbn_plan *p, int64_t off)
{
    return p->prefetch ? cf_next_run(p, off) : 0;
}

/* Whether the reduce carries its lanes across a chunk's runs (plan.carry_runs): the backward
 * sums in float blocks. Where it does, every chunk is reduced by cf_reduce_chunk, in the order
 * of its values, whichever way threads share the work. */
static inline int FN(carries_lanes)(const FN(job) *jb)
{
#ifdef FLOAT_SUM_BLOCK
    return jb->plan.carry_runs && !jb->plan.prefetch && jb->op == OP_BACKWARD;
#else
    (void)jb;
    return 0;
#endif
}

#ifdef FLOAT_SUM_BLOCK
/* Backward's partials of chunk k of channel c with the lanes carried across its runs: a float
 * block is FLOAT_BLOCK_STEPS steps of the chunk, which may span runs; each run's last values
 * (fewer than a step) go to the double lanes. y: jb->y, or NULL (a constant at each call). */
APPLY_INLINE void FN(cf_dy_chunk_body)(const FN(job) *jb, int64_t c, int64_t k,
                                        const TS *y, double *acc)
{
    const cbn_plan *p = &jb->plan;
    const double center = (double)jb->backward.mean[c];
    const T cf = (T)center;
    double a[FLANES] = {0.0}, q[FLANES] = {0.0}, d[D_LANES] = {0.0}, t[BACKWARD_SUMS] = {0.0};
    T fa[FLANES] = {0}, fq[FLANES] = {0}, fd[FLANES] = {0};
    int steps = 0;                           /* in the current block */
    CF_FOR_PIECES(p, c, k, off, len) {
        const TS *dy = jb->dy + off, *x = jb->x + off, *yr = y ? y + off : NULL;
        const int64_t ahead = cf_next_run(p, off);   /* in cache, but a run away */
        int64_t i = 0;
        for (; i + LANES <= len; i += LANES) {
            if (ahead) FN(prefetch_dy_step)(dy, yr, x, i + ahead);
            FN(dy_float_step)(dy, yr, x, i, cf, fa, fq, fd);
            if (++steps == FLOAT_BLOCK_STEPS) {
                FN(carry_dy_block)(fa, fq, fd, a, q, d);
                steps = 0;
            }
        }
        FN(dy_run_tail)(dy, yr, x, i, len, center, a, q, d, t);
    }
    FN(carry_dy_block)(fa, fq, fd, a, q, d);
    acc[0] = acc[1] = acc[2] = 0.0;
    FN(add_dy_lanes)(a, q, d, t, acc);
}

static void FN(cf_dy_chunk_carried)(const FN(job) *jb, int64_t c, int64_t k, double *acc)
{
    if (jb->y) FN(cf_dy_chunk_body)(jb, c, k, jb->y, acc);
    else FN(cf_dy_chunk_body)(jb, c, k, NULL, acc);
}
#endif

/* Partials of chunk k of channel c (pivot: training's shift; exact: see cf_reduce_piece). */
static void FN(cf_reduce_chunk)(const FN(job) *jb, int64_t c, int64_t k, double pivot,
                                int exact, double *acc)
{
#ifdef FLOAT_SUM_BLOCK
    if (!exact && FN(carries_lanes)(jb)) {
        FN(cf_dy_chunk_carried)(jb, c, k, acc);
        return;
    }
#endif
    for (int64_t i = 0; i < FN(n_sums)(jb->op); i++) acc[i] = 0.0;
    CF_FOR_PIECES(&jb->plan, c, k, off, len)
        FN(cf_reduce_piece)(jb, c, off, len, pivot, cf_ahead(&jb->plan, off), exact, acc);
}

/* Partials of channels [c0, c1) in storage order (n outer): long contiguous streams that the
 * hardware prefetches well, instead of one short run per channel and n. Chunks whose lanes
 * carry across runs go chunk by chunk instead (carries_lanes). */
static void FN(cf_reduce_group)(const FN(job) *jb, int64_t c0, int64_t c1, double *part)
{
    const cbn_plan *p = &jb->plan;
    const int64_t K = p->n_chunks, S = p->S, ns = FN(n_sums)(jb->op);
    if (FN(carries_lanes)(jb)) {
        for (int64_t c = c0; c < c1; c++)
            for (int64_t k = 0; k < K; k++)
                FN(cf_reduce_chunk)(jb, c, k, 0.0, 0, part + ns * (c * K + k));
        return;
    }
    memset(part + ns * c0 * K, 0, sizeof(double) * (size_t)(ns * (c1 - c0) * K));
    for (int64_t n = 0; n < p->N; n++)
        for (int64_t c = c0; c < c1; c++) {
            const int64_t base = (n * p->C + c) * S;
            const double pivot = jb->op == OP_TRAIN ? jb->pivot[c] : 0.0;
            const int64_t ahead = cf_ahead(p, base);
            for (int64_t s = 0; s < S;) {
                const int64_t m = n * S + s, k = m / p->chunk;
                int64_t len = (k + 1) * p->chunk - m;
                if (len > S - s) len = S - s;
                FN(cf_reduce_piece)(jb, c, base + s, len, pivot, ahead, 0,
                                    part + ns * (c * K + k));
                s += len;
            }
        }
}

/* Sum of a channel's chunk partials (ns per chunk), in chunk order. */
static void FN(sum_chunk_partials)(const cbn_plan *p, int64_t ns, int64_t c, const double *part,
                                   double *s)
{
    const double *pc = part + ns * c * p->n_chunks;
    for (int64_t i = 0; i < ns; i++) s[i] = 0.0;
    for (int64_t k = 0; k < p->n_chunks; k++)
        for (int64_t i = 0; i < ns; i++) s[i] += pc[ns * k + i];
}

/* Channel c's sums over all its chunks, summed again in double (exact), chunk by chunk. */
static void FN(cf_sum_channel_exact)(const FN(job) *jb, int64_t c, double pivot, double *s)
{
    const int64_t ns = FN(n_sums)(jb->op);
    double chunk[BACKWARD_SUMS];
    for (int64_t i = 0; i < ns; i++) s[i] = 0.0;
    for (int64_t k = 0; k < jb->plan.n_chunks; k++) {
        FN(cf_reduce_chunk)(jb, c, k, pivot, 1, chunk);
        for (int64_t i = 0; i < ns; i++) s[i] += chunk[i];
    }
}

/* Finalize channel c from its chunk partials. For training, a channel whose one-pass sums
 * cancelled is summed again around its mean, chunk by chunk, by the calling thread; for
 * backward, a channel whose float blocks overflowed is summed again in double. */
static void FN(cf_finalize)(const FN(job) *jb, int64_t c, const double *part, int write_outputs,
                            T *coefs)
{
    double s[BACKWARD_SUMS];
    FN(sum_chunk_partials)(&jb->plan, FN(n_sums)(jb->op), c, part, s);
    if (jb->op == OP_BACKWARD) {
        if (!FN(sums_finite)(s, BACKWARD_SUMS)) FN(cf_sum_channel_exact)(jb, c, 0.0, s);
        FN(finalize_backward)(jb, c, s, write_outputs, coefs);
        return;
    }
    double mean;
    if (!FN(finalize_train)(jb, c, jb->pivot[c], s[0], s[1], 0, write_outputs, coefs, &mean))
        return;
    const double pivot = FN(second_pivot)(jb->pivot[c], mean);
    FN(cf_sum_channel_exact)(jb, c, pivot, s);
    FN(finalize_train)(jb, c, pivot, s[0], s[1], 1, write_outputs, coefs, &mean);
}

/* Elementwise pass over values [off, off+len) of one channel; with jb->stream, each block is
 * computed in L1 and then streamed out (the residual's gradient too). */
static void FN(cf_apply_piece)(const FN(job) *jb, int64_t off, int64_t len, const T *coefs)
{
    const TS *dy = jb->dy ? jb->dy + off : NULL, *y = jb->y ? jb->y + off : NULL;
    const TS *res = jb->residual ? jb->residual + off : NULL;
    TS *dres = jb->d_residual ? jb->d_residual + off : NULL;
    const FN(op) op = FN(apply_op)(jb);
    if (!jb->stream) {
        FN(run_apply)(op, jb->relu, jb->x + off, dy, y, res, jb->out + off, dres, len, coefs);
        return;
    }
    TS buf[CBN_STREAM_BLOCK], dbuf[CBN_STREAM_BLOCK];
    for (int64_t i = 0, n; i < len; i += n) {
        n = cbn_stream_block_len(jb->out + off + i, len - i, CBN_STREAM_BLOCK, sizeof(TS));
        FN(run_apply)(op, jb->relu, jb->x + off + i, dy ? dy + i : NULL, y ? y + i : NULL,
                      res ? res + i : NULL, buf, dres ? dbuf : NULL, n, coefs);
        cbn_stream_bytes(jb->out + off + i, buf, sizeof(TS) * (size_t)n);
        if (dres) cbn_stream_bytes(dres + i, dbuf, sizeof(TS) * (size_t)n);
    }
}

static void FN(cf_apply_chunk)(const FN(job) *jb, int64_t c, int64_t k, const T *coefs)
{
    CF_FOR_PIECES(&jb->plan, c, k, off, len) FN(cf_apply_piece)(jb, off, len, coefs);
}

/* Runs [r0, r1) of op OP in storage order (run r is (n, c) = (r / C, r % C)), coefficients
 * from jb->coef. OP is a constant at each use below, so run_apply's dispatch folds away and a
 * run costs little more than its vector loop (runs can be 49 values). */
#define CF_APPLY_RUNS(OP)                                                                       \
    for (int64_t r = r0; r < r1; r++) {                                                         \
        const T coefs[N_COEF] = {center[c], scale[c], shift[c], xmu[c]};                        \
        const int64_t o = r * S;                                                                \
        FN(run_apply)(OP, relu, x + o, dy ? dy + o : NULL, y ? y + o : NULL,                   \
                      res ? res + o : NULL, out + o, dres ? dres + o : NULL, S, coefs);         \
        if (++c == C) c = 0;                                                                    \
    }

static void FN(cf_apply_runs)(const FN(job) *jb, int64_t r0, int64_t r1)
{
    const int64_t C = jb->plan.C, S = jb->plan.S;
    int64_t c = r0 % C;
    if (jb->stream) {               /* each run computed in L1 and streamed out */
        for (int64_t r = r0; r < r1; r++) {
            T coefs[N_COEF];
            FN(load_coefs)(jb, c, coefs);
            FN(cf_apply_piece)(jb, r * S, S, coefs);
            if (++c == C) c = 0;
        }
        return;
    }
    const T *center = jb->coef[K_CENTER], *scale = jb->coef[K_SCALE], *shift = jb->coef[K_SHIFT],
            *xmu = jb->coef[K_XMU];
    const TS *x = jb->x, *dy = jb->dy, *y = jb->y, *res = jb->residual;
    TS *out = jb->out, *dres = jb->d_residual;
    const int relu = jb->relu;
    switch (FN(apply_op)(jb)) {
    case OP_INFER: CF_APPLY_RUNS(OP_INFER) break;
    case OP_TRAIN: CF_APPLY_RUNS(OP_TRAIN) break;
    case OP_BACKWARD: CF_APPLY_RUNS(OP_BACKWARD) break;
    case OP_FROZEN_DX: CF_APPLY_RUNS(OP_FROZEN_DX) break;
    }
}
#undef CF_APPLY_RUNS

/* ---- channels-first with short runs (plan.columns) -----------------------------------------
 * With S small, one run per (n, c) is too short to stream or vectorize well. Channels [g0, g1)
 * are then the columns [g0*S, g1*S) of the matrix x[n][c*S + s] and go through the
 * channels-last loops: column sums over n, then each channel adds its S columns in order. A
 * channel is never split between threads in this mode, so this is its only summation order. */

/* per column of the scratch: doubles (two sums and training's pivot; backward: a third sum in
 * the pivot's place); Ts (coefficients, then row buffers for streaming the output and the
 * residual's gradient) */
enum { COLUMN_DOUBLES = 3, COLUMN_TS = N_COEF + 2 };

static size_t FN(column_scratch_bytes)(void)
{
    return (sizeof(double) * COLUMN_DOUBLES + sizeof(T) * COLUMN_TS) * CBN_COLUMN_WIDTH;
}

/* Channel c's sums from its S column sums (columns relative to the group start g0); d: the
 * third sum's columns (backward), or NULL. */
static void FN(sum_column_sums)(const double *s, const double *q, const double *d, int64_t S,
                                int64_t j0, double *sums)
{
    sums[0] = sums[1] = 0.0;
    for (int64_t j = j0; j < j0 + S; j++) {
        sums[0] += s[j];
        sums[1] += q[j];
    }
    if (!d) return;
    sums[2] = 0.0;
    for (int64_t j = j0; j < j0 + S; j++) sums[2] += d[j];
}

/* The elementwise pass over channels [g0, g1) as columns: each channel's coefficients
 * (jb->coef) spread over its S columns, then row after row. tscratch: COLUMN_TS *
 * CBN_COLUMN_WIDTH values (the column coefficients and two row buffers for streaming). */
static void FN(cf_column_apply)(const FN(job) *jb, int64_t g0, int64_t g1, T *tscratch)
{
    const cbn_plan *p = &jb->plan;
    const int64_t S = p->S, W = CBN_COLUMN_WIDTH;
    T *coef[N_COEF];
    for (int i = 0; i < N_COEF; i++) {
        T *restrict col = coef[i] = tscratch + i * W;
        for (int64_t c = g0; c < g1; c++) {
            const T value = jb->coef[i][c];
            for (int64_t j = (c - g0) * S; j < (c - g0 + 1) * S; j++) col[j] = value;
        }
    }
    /* the row buffers hold stored values (TS, no wider than T) */
    FN(apply_rows)(jb, coef, g0 * S, p->N, p->C * S, (g1 - g0) * S,
                   (TS *)(tscratch + N_COEF * W), (TS *)(tscratch + (N_COEF + 1) * W), W);
}

static void FN(cf_column_group)(const FN(job) *jb, int64_t g0, int64_t g1, char *scratch)
{
    const cbn_plan *p = &jb->plan;
    const int64_t S = p->S, stride = p->C * S, w = (g1 - g0) * S;
    const int64_t W = CBN_COLUMN_WIDTH;
    double *s = (double *)scratch, *q = s + W, *col = q + W;   /* col: pivot per column */
    double *d = jb->op == OP_BACKWARD ? col : NULL;            /* backward: sum(x - center) */
    T *center = (T *)(col + W);          /* backward: the saved mean per column */
    FN(tile) t = {0, p->N, g0 * S, w, p->prefetch, 0};
    for (int64_t c = g0; c < g1; c++) {
        double *restrict pc = col + (c - g0) * S;
        T *restrict mc = center + (c - g0) * S;
        if (jb->op == OP_TRAIN) {
            const double pivot = jb->pivot[c];
            for (int64_t j = 0; j < S; j++) pc[j] = pivot;
        } else {
            const T mean = jb->backward.mean[c];
            for (int64_t j = 0; j < S; j++) mc[j] = mean;
        }
    }
    memset(s, 0, sizeof(double) * (size_t)w);
    memset(q, 0, sizeof(double) * (size_t)w);
    if (d) memset(d, 0, sizeof(double) * (size_t)w);
    if (jb->op == OP_TRAIN) FN(cl_shifted_sums)(jb->x, stride, t, col, s, q);
    else FN(cl_dy_sums)(jb->x, jb->dy, jb->y, stride, t, center, s, q, d);
    for (int64_t c = g0; c < g1; c++) {
        const int64_t j0 = (c - g0) * S;
        double sums[BACKWARD_SUMS], mean;
        T coefs[N_COEF];
        FN(sum_column_sums)(s, q, d, S, j0, sums);
        if (jb->op == OP_BACKWARD) {
            if (!FN(sums_finite)(sums, BACKWARD_SUMS)) {
                /* float blocks overflowed: this channel's columns again, in double */
                FN(tile) tc = {0, p->N, c * S, S, p->prefetch, 1};
                for (int64_t j = j0; j < j0 + S; j++) s[j] = q[j] = d[j] = 0.0;
                FN(cl_dy_sums)(jb->x, jb->dy, jb->y, stride, tc, center + j0, s + j0, q + j0,
                               d + j0);
                FN(sum_column_sums)(s, q, d, S, j0, sums);
            }
            FN(finalize_backward)(jb, c, sums, 1, coefs);
        } else if (FN(finalize_train)(jb, c, jb->pivot[c], sums[0], sums[1], 0, 1, coefs, &mean)) {
            /* cancelled: sum this channel's columns again around its mean, in double */
            FN(tile) tc = {0, p->N, c * S, S, p->prefetch, 1};
            const double pivot = FN(second_pivot)(jb->pivot[c], mean);
            for (int64_t j = j0; j < j0 + S; j++) col[j] = pivot, s[j] = q[j] = 0.0;
            FN(cl_shifted_sums)(jb->x, stride, tc, col + j0, s + j0, q + j0);
            FN(sum_column_sums)(s, q, NULL, S, j0, sums);
            FN(finalize_train)(jb, c, pivot, sums[0], sums[1], 1, 1, coefs, &mean);
        }
        FN(store_coefs)(jb, c, coefs);
    }
    if (!jb->reduce_only) FN(cf_column_apply)(jb, g0, g1, (T *)(col + W));
}

/* ---- a thread's share of the call ------------------------------------------------------- */

/* Channels per group: the group's input and output bytes fit the per-core cache budget. */
static int64_t FN(cf_group_channels)(const FN(job) *jb)
{
    const int64_t arrays = (jb->op == OP_BACKWARD ? 3 : 2) + (jb->residual || jb->d_residual);
    const int64_t group = CBN_GROUP_BYTES / (jb->plan.M * arrays * (int64_t)sizeof(T));
    return group < 1 ? 1 : group;
}

/* Channels [c0, c1), whole: reduce them, finalize them, and apply them while they are still
 * cached, so x crosses DRAM once. */
static void FN(cf_whole_group)(const FN(job) *jb, int64_t c0, int64_t c1)
{
    T coefs[N_COEF];
    FN(cf_reduce_group)(jb, c0, c1, jb->partials);
    for (int64_t c = c0; c < c1; c++) {
        FN(cf_finalize)(jb, c, jb->partials, 1, coefs);
        FN(store_coefs)(jb, c, coefs);
    }
    if (!jb->reduce_only)
        for (int64_t n = 0; n < jb->plan.N; n++)
            FN(cf_apply_runs)(jb, n * jb->plan.C + c0, n * jb->plan.C + c1);
}

/* Enough channel groups to go round (or short runs, plan.columns, whose units are whole
 * channels): threads take groups of whole channels as they come (take_unit), so none waits for
 * a thread that lost its core, and no barrier is needed. */
static void FN(cf_groups_thread)(FN(job) *jb, int64_t t, int64_t nt)
{
    const cbn_plan *p = &jb->plan;
    int64_t group = FN(cf_group_channels)(jb);
    char *scratch = NULL;
    (void)nt;
    if (p->columns) {
        if (group > CBN_COLUMN_WIDTH / p->S) group = CBN_COLUMN_WIDTH / p->S;
        scratch = jb->column_scratch + (size_t)t * FN(column_scratch_bytes)();
    }
    for (int64_t g; (g = FN(take_unit)(jb)) * group < p->C;) {
        const int64_t c0 = g * group, c1 = c0 + group < p->C ? c0 + group : p->C;
        if (p->columns) FN(cf_column_group)(jb, c0, c1, scratch);
        else FN(cf_whole_group)(jb, c0, c1);
    }
    cbn_stream_fence();
}

/* Few channels for the threads: thread t owns the contiguous unit (chunk) range [u0, u1).
 * Channels whose chunks all lie in its range are done in whole groups (cf_whole_group). A
 * channel cut by a range boundary (at most two per thread) is reduced chunk by chunk, and
 * finished after a barrier: every thread holding part of it adds the same partials in the same
 * order, so all get the same bits; the thread holding its last chunk writes the per-channel
 * outputs. */
static void FN(cf_ranges_thread)(FN(job) *jb, int64_t t, int64_t nt)
{
    const cbn_plan *p = &jb->plan;
    const int64_t U = p->n_units, K = p->n_chunks;
    const int64_t group = FN(cf_group_channels)(jb);
    double *part = jb->partials;
    const int64_t ns = FN(n_sums)(jb->op);
    const int64_t u0 = U * t / nt, u1 = U * (t + 1) / nt;
    const int64_t own0 = (u0 + K - 1) / K, own1 = u1 / K;   /* channels wholly mine */
    /* chunks before the first whole channel (all, if the range lies inside one) */
    const int64_t head_end = u1 < own0 * K ? u1 : own0 * K;
    for (int64_t u = u0; u < head_end; u++)
        FN(cf_reduce_chunk)(jb, u / K, u % K, jb->pivot ? jb->pivot[u / K] : 0.0, 0,
                            part + ns * u);
    for (int64_t g0 = own0; g0 < own1; g0 += group)
        FN(cf_whole_group)(jb, g0, g0 + group < own1 ? g0 + group : own1);
    for (int64_t u = own1 * K > head_end ? own1 * K : head_end; u < u1; u++)
        FN(cf_reduce_chunk)(jb, u / K, u % K, jb->pivot ? jb->pivot[u / K] : 0.0, 0,
                            part + ns * u);
    TEAM_BARRIER(nt);
    /* Channels cut by a range boundary: at most the one holding u0 and the one
     * holding u1 - 1. All of them are finalized before any is applied, because a second
     * pass over a channel reads all of its x, which in place (y == x) another thread's
     * apply would be overwriting. */
    const int64_t c_lo = u0 / K, c_hi = (u1 - 1) / K;
    T coefs_lo[N_COEF], coefs_hi[N_COEF];
#define WHOLLY_MINE(c) ((c) >= own0 && (c) < own1)
    const int cut_lo = u1 > u0 && !WHOLLY_MINE(c_lo);
    const int cut_hi = u1 > u0 && c_hi != c_lo && !WHOLLY_MINE(c_hi);
#undef WHOLLY_MINE
    if (cut_lo) FN(cf_finalize)(jb, c_lo, part, (c_lo + 1) * K - 1 < u1, coefs_lo);
    if (cut_hi) FN(cf_finalize)(jb, c_hi, part, (c_hi + 1) * K - 1 < u1, coefs_hi);
    TEAM_BARRIER(nt);
    if (!jb->reduce_only)
        for (int64_t u = u0; u < u1; u++) {
            const int64_t c = u / K;
            if (cut_lo && c == c_lo) FN(cf_apply_chunk)(jb, c, u - c * K, coefs_lo);
            else if (cut_hi && c == c_hi) FN(cf_apply_chunk)(jb, c, u - c * K, coefs_hi);
        }
    cbn_stream_fence();
}

/* Channel groups per thread from which threads take groups at run time instead of ranges. */
#define CF_MIN_GROUPS_PER_THREAD 4

/* Whether threads take whole channel groups (cf_groups_thread) rather than ranges of chunks
 * (cf_ranges_thread). */
static int FN(cf_by_groups)(const FN(job) *jb)
{
    const int64_t group = FN(cf_group_channels)(jb);
    return jb->plan.columns ||
           (jb->plan.C + group - 1) / group >= CF_MIN_GROUPS_PER_THREAD * jb->plan.n_threads;
}

static void FN(cf_run_job)(FN(job) *jb)
{
    const int nt = jb->plan.n_threads;
    jb->next_unit = 0;
    if (FN(cf_by_groups)(jb))
        RUN_THREADS(nt, FN(cf_groups_thread), jb);
    else
        RUN_THREADS(nt, FN(cf_ranges_thread), jb);
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
            T coefs[N_COEF];
            FN(load_coefs)(jb, c, coefs);
            FN(cf_apply_piece)(jb, v, len, coefs);
            v += len;
        }
    }
    cbn_stream_fence();
}
