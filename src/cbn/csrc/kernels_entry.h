/* kernels_entry.h - the twelve public entry points of each element type (include/cbn.h):
 * argument checks, the job's plan and scratch, and the dispatch to the channels-first or
 * channels-last phases.
 *
 * A part of kernels_impl.h (last).
 */

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
static int FN(check_activation)(cbn_activation activation, const TS *y, int64_t n_values)
{
    if (activation == CBN_ACTIVATION_NONE) return CBN_OK;
    if (activation != CBN_ACTIVATION_RELU) return CBN_ERR_ARGUMENT;
    return n_values > 0 && !y ? CBN_ERR_ARGUMENT : CBN_OK;
}

/* The call's plan (plan.h), and whether it streams its output and prefetches its input. */
static void FN(plan_job)(FN(job) *jb, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                         int n_threads)
{
    cbn_make_plan(&jb->plan, N, C, S, layout, n_threads,
                  jb->op == OP_BACKWARD ? CBN_BACKWARD_COLUMN_MAX_S : CBN_COLUMN_MAX_S);
    jb->stream = (double)(N * C * S) * sizeof(T) >=
                 (jb->plan.columns && !jb->apply_only ? CBN_COLUMN_STREAM_MIN_BYTES
                                                      : CBN_STREAM_MIN_BYTES);
    jb->plan.prefetch = (double)(N * C * S) * sizeof(T) >= CBN_PREFETCH_MIN_BYTES;
}

/* Plan the call and take its scratch (scratch.h), in one block sized for what the call uses:
 * partials, training's pivots, channels-last channel sums and finalize arrays (5 per channel),
 * the coefficient arrays, and per-thread column-mode scratch. */
static int FN(start_job)(FN(job) *jb, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                         int n_threads)
{
    cbn_plan *p = &jb->plan;
    FN(plan_job)(jb, N, C, S, layout, n_threads);
    if (p->n_threads > 1 && cbn_contended()) p->n_threads = 1;   /* a busy machine */
    const int by_tiles = p->channels_last && FN(cl_by_whole_tiles)(jb);  /* stack only */
    const int reduces = !jb->apply_only && !by_tiles;
    const int64_t n_part = !reduces ? 0
                           : FN(n_sums)(jb->op) * (p->channels_last ? p->n_row_blocks * C
                                                                    : p->n_units);
    const int64_t n_pivot = reduces && jb->op == OP_TRAIN ? C : 0;
    const int64_t n_sums = reduces && p->channels_last ? 5 * C : 0;
    const int64_t n_double = n_part + n_pivot + n_sums;
    const int64_t n_coef = by_tiles ? 0 : N_COEF * C;
    const size_t column_bytes = p->columns && reduces
                                    ? FN(column_scratch_bytes)() * (size_t)p->n_threads
                                    : 0;
    const size_t main_bytes = sizeof(double) * (size_t)n_double + sizeof(T) * (size_t)n_coef +
                              (size_t)(by_tiles ? 0 : C);
    char *buf = (char *)cbn_scratch_acquire(main_bytes + column_bytes + 64);
    if (!buf) return CBN_ERR_NO_MEMORY;
    jb->column_scratch = buf + (main_bytes + 63) / 64 * 64;
    jb->partials = (double *)buf;
    jb->pivot = n_pivot ? jb->partials + n_part : NULL;
    jb->sums = jb->partials + n_part + n_pivot;
    T *coef = (T *)(buf + sizeof(double) * (size_t)n_double);
    for (int i = 0; i < N_COEF; i++) jb->coef[i] = by_tiles ? NULL : coef + i * C;
    jb->second_pass = by_tiles ? NULL : (unsigned char *)(coef + n_coef);
    if (jb->pivot) FN(channel_pivots)(p, jb->x, 0, C, jb->pivot);
    return CBN_OK;
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
    cbn_scratch_release(jb->partials);
}

/* A job whose fields are filled in, planned and run: the usual end of a public kernel. */
static int FN(start_and_run_job)(FN(job) *jb, int64_t N, int64_t C, int64_t S,
                                 cbn_layout layout, int n_threads)
{
    const int rc = FN(start_job)(jb, N, C, S, layout, n_threads);
    if (rc) return rc;
    FN(run_job)(jb);
    return CBN_OK;
}

/* An empty batch gives the parameters zero gradients (either pointer may be NULL). */
static int FN(zero_gradients)(int64_t C, T *dweight, T *dbias)
{
    for (int64_t c = 0; c < C; c++) {
        if (dweight) dweight[c] = 0;
        if (dbias) dbias[c] = 0;
    }
    return CBN_OK;
}

/* ---- public kernels ------------------------------------------------------------------------- */

int FN(cbn_train_forward_residual)(const TS *x, const TS *residual, TS *y, int64_t N, int64_t C,
                                   int64_t S, cbn_layout layout, const T *weight, const T *bias,
                                   T *running_mean, T *running_var, double momentum, double eps,
                                   int unbiased_running_var, T *save_mean, T *save_invstd,
                                   cbn_activation activation, int n_threads)
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
    jb.residual = residual;
    jb.out = y;
    jb.weight = weight;
    jb.bias = bias;
    jb.train.running_mean = running_mean;
    jb.train.running_var = running_var;
    jb.train.momentum = momentum;
    jb.train.eps = eps;
    jb.train.unbiased_running_var = unbiased_running_var;
    jb.train.save_mean = save_mean;
    jb.train.save_invstd = save_invstd;
    jb.relu = activation == CBN_ACTIVATION_RELU;
    return FN(start_and_run_job)(&jb, N, C, S, layout, n_threads);
}

int FN(cbn_train_forward)(const TS *x, TS *y, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                          const T *weight, const T *bias, T *running_mean, T *running_var,
                          double momentum, double eps, int unbiased_running_var, T *save_mean,
                          T *save_invstd, cbn_activation activation, int n_threads)
{
    return FN(cbn_train_forward_residual)(x, NULL, y, N, C, S, layout, weight, bias,
                                          running_mean, running_var, momentum, eps,
                                          unbiased_running_var, save_mean, save_invstd,
                                          activation, n_threads);
}

int FN(cbn_backward_residual)(const TS *dy, const TS *x, const T *save_mean, const T *save_invstd,
                              const T *weight, const TS *y, cbn_activation activation, TS *dx,
                              TS *d_residual, T *dweight, T *dbias, int64_t N, int64_t C,
                              int64_t S, cbn_layout layout, int n_threads)
{
    int rc = FN(check_shape)(x, dx, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, y, N * C * S))) return rc;
    if (C > 0 && (!dy || !save_mean || !save_invstd)) return CBN_ERR_ARGUMENT;
    if (C == 0) return CBN_OK;
    if (N * S == 0) return FN(zero_gradients)(C, dweight, dbias);   /* empty batch */

    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_BACKWARD;
    jb.x = x;
    jb.dy = dy;
    jb.out = dx;
    jb.weight = weight;
    jb.backward.mean = save_mean;
    jb.backward.invstd = save_invstd;
    jb.backward.dweight = dweight;
    jb.backward.dbias = dbias;
    jb.y = activation == CBN_ACTIVATION_RELU ? y : NULL;
    jb.d_residual = d_residual;
    return FN(start_and_run_job)(&jb, N, C, S, layout, n_threads);
}

int FN(cbn_backward)(const TS *dy, const TS *x, const T *save_mean, const T *save_invstd,
                     const T *weight, const TS *y, cbn_activation activation, TS *dx, T *dweight,
                     T *dbias, int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads)
{
    return FN(cbn_backward_residual)(dy, x, save_mean, save_invstd, weight, y, activation, dx,
                                     NULL, dweight, dbias, N, C, S, layout, n_threads);
}

/* Backward through frozen statistics: the backward job with the running mean as its center,
 * the frozen coefficients (finalize_frozen) and the elementwise pass dx = scale*g. Each channel
 * is reduced and then applied, as for backward (channels-first groups while still in cache). */
int FN(cbn_infer_backward)(const TS *dy, const TS *x, const T *running_mean, const T *running_var,
                           const T *weight, double eps, const TS *y, cbn_activation activation,
                           TS *dx, TS *d_residual, T *dweight, T *dbias, int64_t N, int64_t C,
                           int64_t S, cbn_layout layout, int n_threads)
{
    int rc = FN(check_shape)(x, dx, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, y, N * C * S))) return rc;
    if (!(eps >= 0.0)) return CBN_ERR_ARGUMENT;
    if (C > 0 && (!dy || !running_mean || !running_var)) return CBN_ERR_ARGUMENT;
    if (C == 0) return CBN_OK;
    if (N * S == 0) return FN(zero_gradients)(C, dweight, dbias);   /* empty batch */

    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_BACKWARD;
    jb.x = x;
    jb.dy = dy;
    jb.out = dx;
    jb.d_residual = d_residual;
    jb.weight = weight;
    jb.y = activation == CBN_ACTIVATION_RELU ? y : NULL;
    jb.backward.frozen = 1;
    jb.backward.mean = running_mean;
    jb.backward.running_var = running_var;
    jb.backward.eps = eps;
    jb.backward.dweight = dweight;
    jb.backward.dbias = dbias;
    return FN(start_and_run_job)(&jb, N, C, S, layout, n_threads);
}

#ifndef NARROW_STORAGE        /* parameters only: the float32 one serves 16-bit storage */
int FN(cbn_fold_scale_shift)(int64_t C, const T *running_mean, const T *running_var,
                             const T *weight, const T *bias, double eps, T *scale, T *shift)
{
    if (C < 0 || !(eps >= 0.0)) return CBN_ERR_ARGUMENT;
    if (C > 0 && (!running_mean || !running_var || !scale || !shift)) return CBN_ERR_ARGUMENT;
    FN(fold)(C, running_mean, running_var, weight, bias, eps, scale, shift);
    return CBN_OK;
}
#endif

int FN(cbn_infer_residual)(const TS *x, const TS *residual, TS *y, int64_t N, int64_t C, int64_t S,
                           cbn_layout layout, const T *running_mean, const T *running_var,
                           const T *weight, const T *bias, double eps,
                           cbn_activation activation, int n_threads)
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
    jb.residual = residual;
    jb.out = y;
    jb.relu = activation == CBN_ACTIVATION_RELU;
    jb.weight = weight;
    jb.bias = bias;
    jb.infer.running_mean = running_mean;
    jb.infer.running_var = running_var;
    jb.infer.eps = eps;
    if ((rc = FN(start_job)(&jb, N, C, S, layout, n_threads))) return rc;
    if (jb.coef[K_SCALE]) {       /* folded here, unless the kernel folds tile by tile */
        memset(jb.coef[K_CENTER], 0, sizeof(T) * (size_t)C);  /* unused by inference; defined */
        memset(jb.coef[K_XMU], 0, sizeof(T) * (size_t)C);
        FN(fold)(C, running_mean, running_var, weight, bias, eps, jb.coef[K_SCALE],
                 jb.coef[K_SHIFT]);
    }
    FN(run_job)(&jb);
    return CBN_OK;
}

int FN(cbn_infer)(const TS *x, TS *y, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                  const T *running_mean, const T *running_var, const T *weight, const T *bias,
                  double eps, cbn_activation activation, int n_threads)
{
    return FN(cbn_infer_residual)(x, NULL, y, N, C, S, layout, running_mean, running_var, weight,
                                  bias, eps, activation, n_threads);
}

/* ---- split kernels: the phases of training forward and backward, for data-parallel training
 * where the sums of several processes are combined between the phases ------------------------ */

int FN(cbn_batch_stats)(const TS *x, int64_t N, int64_t C, int64_t S, cbn_layout layout,
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
    jb.train.mean_out = mean;
    jb.train.m2_out = m2;
    return FN(start_and_run_job)(&jb, N, C, S, layout, n_threads);
}

int FN(cbn_normalize)(const TS *x, TS *y, int64_t N, int64_t C, int64_t S, cbn_layout layout,
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
        T coefs[N_COEF];
        FN(train_coefs)(&jb, c, mean[c], invstd[c], coefs);
        FN(store_coefs)(&jb, c, coefs);
    }
    FN(run_job)(&jb);
    return CBN_OK;
}

int FN(cbn_backward_reduce)(const TS *dy, const TS *x, const T *mean, const TS *y,
                            cbn_activation activation, int64_t N, int64_t C, int64_t S,
                            cbn_layout layout, double *sum_dy, double *sum_dy_xmu,
                            double *sum_xmu, int n_threads)
{
    int rc = FN(check_shape)(x, dy, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, y, N * C * S))) return rc;
    if (C > 0 && (!mean || !sum_dy || !sum_dy_xmu || !sum_xmu)) return CBN_ERR_ARGUMENT;
    if (C == 0) return CBN_OK;
    if (N * S == 0) {
        memset(sum_dy, 0, sizeof(double) * (size_t)C);
        memset(sum_dy_xmu, 0, sizeof(double) * (size_t)C);
        memset(sum_xmu, 0, sizeof(double) * (size_t)C);
        return CBN_OK;
    }
    FN(job) jb;
    memset(&jb, 0, sizeof jb);
    jb.op = OP_BACKWARD;
    jb.reduce_only = 1;
    jb.x = x;
    jb.dy = dy;
    jb.y = activation == CBN_ACTIVATION_RELU ? y : NULL;
    jb.backward.mean = mean;
    jb.backward.sum_dy_out = sum_dy;
    jb.backward.sum_dy_xmu_out = sum_dy_xmu;
    jb.backward.sum_xmu_out = sum_xmu;
    return FN(start_and_run_job)(&jb, N, C, S, layout, n_threads);
}

int FN(cbn_backward_dx)(const TS *dy, const TS *x, const T *mean, const T *invstd, const T *weight,
                        const TS *y, cbn_activation activation, const double *sum_dy,
                        const double *sum_dy_xmu, const double *sum_xmu, double count, TS *dx,
                        int64_t N, int64_t C, int64_t S, cbn_layout layout, int n_threads)
{
    int rc = FN(check_shape)(x, dx, N, C, S, layout, n_threads);
    if (rc) return rc;
    if ((rc = FN(check_activation)(activation, y, N * C * S))) return rc;
    if (C > 0 && (!dy || !mean || !invstd || !sum_dy || !sum_dy_xmu || !sum_xmu))
        return CBN_ERR_ARGUMENT;
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
    jb.backward.mean = mean;
    jb.backward.invstd = invstd;
    if ((rc = FN(start_job)(&jb, N, C, S, layout, n_threads))) return rc;
    for (int64_t c = 0; c < C; c++) {
        T coefs[N_COEF];
        const double sums[BACKWARD_SUMS] = {sum_dy[c], sum_dy_xmu[c], sum_xmu[c]};
        FN(backward_coefs)(&jb, c, sums, count, coefs);
        FN(store_coefs)(&jb, c, coefs);
    }
    FN(run_job)(&jb);
    return CBN_OK;
}

