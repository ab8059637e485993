/* kernels_channels_last_call.h - the rest of a channels-last call: the finalize, vectorized
 * across channels, and the thread bodies that run a call (row blocks; whole tiles for calls
 * with few rows).
 *
 * A part of kernels_impl.h (after kernels_channels_last.h).
 */

/* ---- finalize, vectorized across channels, and a thread's share of the call -------------- */

/* Work arrays of the vectorized finalize for channels [c0, c0 + n): entry j is channel c0 + j.
 * They are the job's per-channel scratch from c0 on, or a column tile's own (cl_train_tile). */
typedef struct {
    const double *s, *q;          /* the channels' sums around their pivots */
    double *pivot;                /* moved to the mean for a channel summed again */
    double *mean, *m2, *invstd;
    unsigned char *second_pass;
    T *coef[N_COEF];
} FN(train_work);

static FN(train_work) FN(job_train_work)(const FN(job) *jb, int64_t c0)
{
    const int64_t C = jb->plan.C;
    FN(train_work) wk;
    wk.s = jb->sums + c0;
    wk.q = jb->sums + C + c0;
    wk.mean = jb->sums + 2 * C + c0;
    wk.m2 = jb->sums + 3 * C + c0;
    wk.invstd = jb->sums + 4 * C + c0;
    wk.pivot = jb->pivot + c0;
    wk.second_pass = jb->second_pass + c0;
    for (int i = 0; i < N_COEF; i++) wk.coef[i] = jb->coef[i] + c0;
    return wk;
}

/* First finalize of channels [c0, c0 + n) in channels-last training. With few rows per channel,
 * the per-channel division and square root are most of the work, so this is a series of simple
 * loops the compiler vectorizes (same formulas as finalize_train). A channel whose sums
 * cancelled gets second_pass[j] set and its pivot moved to its mean; returns whether any did. */
static int FN(cl_finalize_train)(const FN(job) *jb, int64_t c0, int64_t n,
                                 const FN(train_work) *wk)
{
    const double M = (double)jb->plan.M, eps = jb->train.eps, mom = jb->train.momentum;
    const double *restrict s = wk->s, *restrict q = wk->q;
    double *restrict pivot = wk->pivot, *restrict mean = wk->mean, *restrict m2 = wk->m2,
           *restrict invstd = wk->invstd;
    unsigned char *restrict second_pass = wk->second_pass;
    int any_cancelled = 0;
#pragma omp simd reduction(| : any_cancelled)
    for (int64_t j = 0; j < n; j++) {
        m2[j] = FN(train_m2)(pivot[j], s[j], q[j], M, &mean[j]);
        const int cancelled = FN(train_cancelled)(q[j], m2[j]);
        second_pass[j] = (unsigned char)cancelled;
        any_cancelled |= cancelled;
    }
    if (any_cancelled) {    /* rare: the channel-by-channel finalize for this range */
        for (int64_t j = 0; j < n; j++) {
            T coefs[N_COEF];
            double mn;
            if (second_pass[j]) {
                pivot[j] = FN(second_pivot)(pivot[j], mean[j]);
                continue;
            }
            FN(finalize_train)(jb, c0 + j, pivot[j], s[j], q[j], 1, 1, coefs, &mn);
            for (int i = 0; i < N_COEF; i++) wk->coef[i][j] = coefs[i];
        }
        return 1;
    }
#pragma omp simd
    for (int64_t j = 0; j < n; j++) invstd[j] = FN(train_invstd)(FN(train_var)(m2[j], M), eps);
    {
        const T *restrict w = jb->weight ? jb->weight + c0 : NULL,
                *restrict beta = jb->bias ? jb->bias + c0 : NULL;
        T *restrict center = wk->coef[K_CENTER], *restrict scale = wk->coef[K_SCALE],
          *restrict shift = wk->coef[K_SHIFT], *restrict xmu = wk->coef[K_XMU];
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            FN(train_coef_values)(w ? (double)w[j] : 1.0, beta ? (double)beta[j] : 0.0, mean[j],
                                  invstd[j], &center[j], &scale[j], &shift[j]);
            xmu[j] = 0;
        }
    }
    if (jb->train.mean_out) {
        double *restrict mean_out = jb->train.mean_out + c0,
                         *restrict m2_out = jb->train.m2_out + c0;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            mean_out[j] = mean[j];
            m2_out[j] = FN(clamped_m2)(m2[j]);
        }
    }
    if (jb->train.save_mean) {
        T *restrict o = jb->train.save_mean + c0;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) o[j] = (T)mean[j];
    }
    if (jb->train.save_invstd) {
        T *restrict o = jb->train.save_invstd + c0;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) o[j] = (T)invstd[j];
    }
    if (jb->train.running_mean) {
        T *restrict rm = jb->train.running_mean + c0, *restrict rv = jb->train.running_var + c0;
        const int unbiased = jb->train.unbiased_running_var;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            rm[j] = FN(momentum_update)(rm[j], mom, mean[j]);
            rv[j] = FN(momentum_update)(
                rv[j], mom,
                FN(running_var_estimate)(unbiased, m2[j], FN(train_var)(m2[j], M), M));
        }
    }
    return 0;
}

/* The sums and coefficient arrays of the backward finalize for channels [c0, c0 + n): entry j
 * is channel c0 + j. They are the job's from c0 on, or a column tile's own (cl_backward_tile). */
typedef struct {
    const double *sum_dy, *sum_dy_xc, *sum_xc;
    T *coef[N_COEF];
} FN(backward_work);

/* Whether the backward sums of the n channels of wk are all finite (see sums_finite). */
static int FN(cl_sums_finite)(const FN(backward_work) *wk, int64_t n)
{
    int finite = 1;
    for (int64_t j = 0; j < n; j++) {
        const double s[BACKWARD_SUMS] = {wk->sum_dy[j], wk->sum_dy_xc[j], wk->sum_xc[j]};
        finite &= FN(sums_finite)(s, BACKWARD_SUMS);
    }
    return finite;
}

static FN(backward_work) FN(job_backward_work)(const FN(job) *jb, int64_t c0)
{
    const int64_t C = jb->plan.C;
    FN(backward_work) wk;
    wk.sum_dy = jb->sums + c0;
    wk.sum_dy_xc = jb->sums + C + c0;
    wk.sum_xc = jb->sums + 2 * C + c0;
    for (int i = 0; i < N_COEF; i++) wk.coef[i] = jb->coef[i] + c0;
    return wk;
}

/* Finalize of channels [c0, c0 + n) in channels-last backward through frozen statistics,
 * vectorized (same formulas as finalize_frozen). */
static void FN(cl_finalize_frozen)(const FN(job) *jb, int64_t c0, int64_t n,
                                   const FN(backward_work) *wk)
{
    const double *restrict sum_dy = wk->sum_dy, *restrict sum_dy_xmu = wk->sum_dy_xc;
    const double eps = jb->backward.eps;
    const T *restrict w = jb->weight ? jb->weight + c0 : NULL,
            *restrict mean = jb->backward.mean + c0, *restrict var = jb->backward.running_var + c0;
    T *restrict center = wk->coef[K_CENTER], *restrict scale = wk->coef[K_SCALE],
      *restrict shift = wk->coef[K_SHIFT], *restrict xmu = wk->coef[K_XMU];
    T *dw = jb->backward.dweight ? jb->backward.dweight + c0 : NULL,
      *db = jb->backward.dbias ? jb->backward.dbias + c0 : NULL;
#pragma omp simd
    for (int64_t j = 0; j < n; j++) {
        T dweight, dbias;
        FN(frozen_coef_values)(w ? (double)w[j] : 1.0, (double)var[j], eps, sum_dy[j],
                               sum_dy_xmu[j], &scale[j], &dweight, &dbias);
        center[j] = mean[j];
        shift[j] = xmu[j] = 0;
        if (dw) dw[j] = dweight;
        if (db) db[j] = dbias;
    }
}

/* Finalize of channels [c0, c1) in channels-last backward, vectorized like cl_finalize_train
 * (same formulas as finalize_backward). */
static void FN(cl_finalize_backward)(const FN(job) *jb, int64_t c0, int64_t n,
                                     const FN(backward_work) *wk)
{
    const double *restrict sum_dy = wk->sum_dy, *restrict sum_dy_xc = wk->sum_dy_xc,
                           *restrict sum_xc = wk->sum_xc;
    if (jb->reduce_only) {          /* the caller combines the sums across processes */
        double *restrict sum_dy_out = jb->backward.sum_dy_out + c0,
                         *restrict sum_dy_xmu_out = jb->backward.sum_dy_xmu_out + c0,
                         *restrict sum_xmu_out = jb->backward.sum_xmu_out + c0;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            sum_dy_out[j] = sum_dy[j];
            sum_dy_xmu_out[j] = sum_dy_xc[j];
            sum_xmu_out[j] = sum_xc[j];
        }
        return;
    }
    if (jb->backward.frozen) {
        FN(cl_finalize_frozen)(jb, c0, n, wk);
        return;
    }
    const double M = (double)jb->plan.M;
    const T *restrict w = jb->weight ? jb->weight + c0 : NULL,
            *restrict mean = jb->backward.mean + c0, *restrict inv = jb->backward.invstd + c0;
    T *restrict center = wk->coef[K_CENTER], *restrict scale = wk->coef[K_SCALE],
      *restrict shift = wk->coef[K_SHIFT], *restrict xmu = wk->coef[K_XMU];
#pragma omp simd
    for (int64_t j = 0; j < n; j++) {
        center[j] = mean[j];
        FN(backward_coef_values)(w ? (double)w[j] : 1.0, (double)inv[j], sum_dy[j],
                                 sum_dy_xc[j], sum_xc[j], M, &scale[j], &shift[j], &xmu[j]);
    }
    if (jb->backward.dweight) {
        T *restrict dw = jb->backward.dweight + c0;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            double delta;
            dw[j] = (T)(FN(backward_centered)(sum_dy[j], sum_dy_xc[j], sum_xc[j], M, &delta) *
                        (double)inv[j]);
        }
    }
    if (jb->backward.dbias) {
        T *restrict db = jb->backward.dbias + c0;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) db[j] = (T)sum_dy[j];
    }
}

/* ---- whole tiles (plan.whole_tiles): few rows, so each column tile holds all the values of
 * its channels. A thread then reduces, finalizes and applies a tile on its own, with the tile's
 * work arrays on its stack: no barrier and no per-channel scratch, which with a million
 * channels cost more than the data (~80 bytes per channel against 8). The sums are those of
 * the row-block path with its one row block. */

/* Elementwise pass over a whole tile with the tile's own coefficients (coef[i][j]: column j). */
static void FN(cl_apply_tile)(const FN(job) *jb, FN(tile) t, T *const *coef)
{
    TS buf[CL_STREAM_BUF], dbuf[CL_STREAM_BUF];
    FN(apply_rows)(jb, coef, t.c0, t.r1 - t.r0, jb->plan.C, t.w, buf, dbuf, CL_STREAM_BUF);
}

/* GCC cannot see that the first t.w entries of pivot, all that is read, are set first. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
static void FN(cl_train_tile)(const FN(job) *jb, int64_t u)
{
    const cbn_plan *p = &jb->plan;
    const FN(tile) t = FN(unit_tile)(p, u);
    double s[CBN_MAX_COL_TILE], q[CBN_MAX_COL_TILE], pivot[CBN_MAX_COL_TILE];
    double mean[CBN_MAX_COL_TILE], m2[CBN_MAX_COL_TILE], invstd[CBN_MAX_COL_TILE];
    unsigned char second_pass[CBN_MAX_COL_TILE];
    T coef_values[N_COEF][CBN_MAX_COL_TILE];
    FN(train_work) wk = {s, q, pivot, mean, m2, invstd, second_pass, {NULL}};
    for (int i = 0; i < N_COEF; i++) wk.coef[i] = coef_values[i];
    FN(channel_pivots)(p, jb->x, t.c0, t.w, pivot);
    for (int64_t j = 0; j < t.w; j++) s[j] = q[j] = 0.0;
    FN(cl_shifted_sums)(jb->x, p->C, t, pivot, s, q);
    if (FN(cl_finalize_train)(jb, t.c0, t.w, &wk)) {
        /* sum again, in double, around the means of the channels that cancelled (now their
         * pivots) */
        FN(tile) te = t;
        te.exact = 1;
        for (int64_t j = 0; j < t.w; j++) s[j] = q[j] = 0.0;
        FN(cl_shifted_sums)(jb->x, p->C, te, pivot, s, q);
        for (int64_t j = 0; j < t.w; j++) {
            T coefs[N_COEF];
            double mn;
            if (!second_pass[j]) continue;
            FN(finalize_train)(jb, t.c0 + j, pivot[j], s[j], q[j], 1, 1, coefs, &mn);
            for (int i = 0; i < N_COEF; i++) coef_values[i][j] = coefs[i];
        }
    }
    if (!jb->reduce_only) FN(cl_apply_tile)(jb, t, wk.coef);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/* Inference folds each tile's running statistics as it goes (once per channel: one row block). */
static void FN(cl_infer_tile)(const FN(job) *jb, int64_t u)
{
    const FN(tile) t = FN(unit_tile)(&jb->plan, u);
    T scale[CBN_MAX_COL_TILE], shift[CBN_MAX_COL_TILE];
    T *coef[N_COEF];
    coef[K_CENTER] = coef[K_XMU] = NULL;              /* not read by inference */
    coef[K_SCALE] = scale;
    coef[K_SHIFT] = shift;
    FN(fold)(t.w, jb->infer.running_mean + t.c0, jb->infer.running_var + t.c0,
             jb->weight ? jb->weight + t.c0 : NULL, jb->bias ? jb->bias + t.c0 : NULL,
             jb->infer.eps, scale, shift);
    FN(cl_apply_tile)(jb, t, coef);
}

static void FN(cl_backward_tile)(const FN(job) *jb, int64_t u)
{
    const FN(tile) t = FN(unit_tile)(&jb->plan, u);
    double sum_dy[CBN_MAX_COL_TILE], sum_dy_xc[CBN_MAX_COL_TILE], sum_xc[CBN_MAX_COL_TILE];
    T coef_values[N_COEF][CBN_MAX_COL_TILE];
    FN(backward_work) wk = {sum_dy, sum_dy_xc, sum_xc, {NULL}};
    for (int i = 0; i < N_COEF; i++) wk.coef[i] = coef_values[i];
    for (int pass = 0; pass < 2; pass++) {    /* again in double if float blocks overflowed */
        FN(tile) tp = t;
        tp.exact = pass;
        for (int64_t j = 0; j < t.w; j++) sum_dy[j] = sum_dy_xc[j] = sum_xc[j] = 0.0;
        FN(cl_dy_sums)(jb->x, jb->dy, jb->y, jb->plan.C, tp, jb->backward.mean + t.c0, sum_dy,
                       sum_dy_xc, sum_xc);
        if (FN(cl_sums_finite)(&wk, t.w)) break;
    }
    FN(cl_finalize_backward)(jb, t.c0, t.w, &wk);
    if (!jb->reduce_only) FN(cl_apply_tile)(jb, t, wk.coef);
}

/* Whether this call goes tile by tile: every op with whole tiles (reduce-only phases too) but
 * the apply-only split phases, whose coefficients the caller filled in for all channels. */
static int FN(cl_by_whole_tiles)(const FN(job) *jb)
{
    return jb->plan.whole_tiles && (jb->op == OP_INFER || !jb->apply_only);
}

static void FN(cl_tiles_thread)(FN(job) *jb, int64_t t, int64_t nt)
{
    (void)t, (void)nt;
    for (int64_t u; (u = FN(take_unit)(jb)) < jb->plan.n_units;) {
        if (jb->op == OP_INFER) FN(cl_infer_tile)(jb, u);
        else if (jb->op == OP_TRAIN) FN(cl_train_tile)(jb, u);
        else FN(cl_backward_tile)(jb, u);
    }
    cbn_stream_fence();
}

/* Reduce every unit; sum and finalize each channel; sum again, in double and around the mean,
 * the channels whose one-pass sums cancelled (rare: a pivot far out in its channel), or every
 * channel of a backward whose float blocks overflowed (data beyond ~1e19); then apply. Each
 * thread applies about the row blocks it reduced, last first: those were read most recently and
 * are the ones still in cache when the tensor does not fit. */
static void FN(cl_thread)(FN(job) *jb, int64_t t, int64_t nt)
{
    const cbn_plan *p = &jb->plan;
    const int64_t U = p->n_units, C = p->C;
    const int64_t u0 = U * t / nt, u1 = U * (t + 1) / nt;
    const int64_t c0 = C * t / nt, c1 = C * (t + 1) / nt;
    if (!jb->apply_only) {
        for (int64_t u = u0; u < u1; u++) FN(cl_reduce_unit)(jb, u, 0);
        TEAM_BARRIER(nt);
        FN(sum_row_block_partials)(jb, c0, c1);
        int mine_cancelled = 0;
        if (jb->op == OP_TRAIN) {
            const FN(train_work) wk = FN(job_train_work)(jb, c0);
            mine_cancelled = FN(cl_finalize_train)(jb, c0, c1 - c0, &wk);
        } else {    /* overflowed float blocks are summed again, in double, below */
            const FN(backward_work) wk = FN(job_backward_work)(jb, c0);
            mine_cancelled = !FN(cl_sums_finite)(&wk, c1 - c0);
            if (!mine_cancelled) FN(cl_finalize_backward)(jb, c0, c1 - c0, &wk);
        }
        if (mine_cancelled) {
#pragma omp atomic write
            jb->any_second_pass = 1;
        }
        TEAM_BARRIER(nt);
        int second_pass;
#pragma omp atomic read
        second_pass = jb->any_second_pass;
        if (second_pass) {      /* all threads agree: a second pass, in double */
            for (int64_t u = u0; u < u1; u++) FN(cl_reduce_unit)(jb, u, 1);
            TEAM_BARRIER(nt);
            FN(sum_row_block_partials)(jb, c0, c1);
            if (jb->op == OP_BACKWARD) {    /* every channel: as on any other thread count */
                const FN(backward_work) wk = FN(job_backward_work)(jb, c0);
                FN(cl_finalize_backward)(jb, c0, c1 - c0, &wk);
            }
            for (int64_t c = c0; c < c1 && jb->op == OP_TRAIN; c++) {
                T coefs[N_COEF];
                double mean;
                if (!jb->second_pass[c]) continue;
                FN(finalize_train)(jb, c, jb->pivot[c], jb->sums[c], jb->sums[C + c], 1, 1,
                                   coefs, &mean);
                FN(store_coefs)(jb, c, coefs);
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

static void FN(cl_run_job)(FN(job) *jb)
{
    jb->any_second_pass = 0;
    jb->next_unit = 0;
    if (FN(cl_by_whole_tiles)(jb)) RUN_THREADS(jb->plan.n_threads, FN(cl_tiles_thread), jb);
    else RUN_THREADS(jb->plan.n_threads, FN(cl_thread), jb);
}
