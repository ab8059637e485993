/* kernels_channels_last.h - channels-last data (x[r][c], rows r = n*S + s) cut into units: the
 * reductions and the elementwise rows of a unit, which channels-first data with short runs also
 * goes through. kernels_channels_last_call.h finalizes and runs a call.
 *
 * A part of kernels_impl.h (after kernels_common.h).
 */

/* ---- channels-last: unit = (row block, column tile) ----------------------------------------
 * Partials are structure-of-arrays: sum i (of n_sums) of row block rb and channel c at
 * part[i*n_row_blocks*C + rb*C + c]. */

/* rows [r0, r1) of columns [c0, c0 + w); prefetch: software prefetch on; exact: sums in double
 * only (no float blocks: a second sum) */
typedef struct { int64_t r0, r1, c0, w; int prefetch, exact; } FN(tile);

static FN(tile) FN(unit_tile)(const cbn_plan *p, int64_t u)
{
    const int64_t rb = u / p->n_col_tiles, ct = u - rb * p->n_col_tiles;
    FN(tile) t;
    t.r0 = rb * p->row_block;
    t.r1 = t.r0 + p->row_block < p->rows ? t.r0 + p->row_block : p->rows;
    t.c0 = ct * p->col_tile;
    t.w = t.c0 + p->col_tile < p->C ? p->col_tile : p->C - t.c0;
    t.prefetch = p->prefetch;
    t.exact = 0;
    return t;
}

/* Rows of a tile lie C values apart. When that is farther than the tile is wide, the hardware
 * prefetcher does not follow from one row to the next, so a step over rows [r, r + 4) asks,
 * for each CL_PREFETCH_COLUMNS columns [j, j + CL_PREFETCH_COLUMNS) it reads, for the same
 * columns of the next step's rows. (Blocks of 64 columns: narrower ones cost more in loop
 * overhead than the prefetch saves.) */
#define CL_PREFETCH_COLUMNS 64
static inline void FN(prefetch_next_rows)(const TS *p, int64_t C, int64_t r, int64_t r_end,
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
    const int64_t step_bytes = 4 * C * (int64_t)sizeof(TS);
    return 4 * ((CL_PREFETCH_BYTES + step_bytes - 1) / step_bytes);
}

static inline void FN(prefetch_rows_ahead)(const TS *p, int64_t C, int64_t r, int64_t r_end,
                                           int64_t ahead)
{
    const int64_t a = r + ahead, b = a + 4 < r_end ? a + 4 : r_end;
    for (int64_t i = a * C; i < b * C; i += LANES) FN(prefetch_step)(p + i);
}

/* Columns of a 4-row step in the column sums: CL_PREFETCH_COLUMNS when rows are far apart
 * (prefetched that many at a time), else the tile's width; at most WIDE_STEP, the values
 * widened per step with 16-bit storage. */
static inline int64_t FN(columns_per_step)(int far, int64_t w)
{
    const int64_t step = far ? CL_PREFETCH_COLUMNS : w;
    return step < WIDE_STEP ? step : WIDE_STEP;
}

/* Rows far apart are read CL_PREFETCH_COLUMNS columns at a time. In the backward sums, the
 * first of a row step's column steps ends at the next 64-byte boundary of x's row, so that
 * every later vector reads whole cache lines of x (and of dy, where it sits at the same offset,
 * as NumPy places large arrays). A vector across two lines shares one with the next vector of
 * its row, and with rows a multiple of 4 KiB apart (C = 1024 float32) the 8 rows of x and of dy
 * fill the lines' L1 set before it is read again: 256x1024 float32 backward took 1.6x the time
 * with x and dy both 16 bytes past a line as with both on one (0.69x with this, AMD Zen 4).
 * Training reads 8 rows of x only, which fit the set: there the shorter first step cost more
 * than it saved. Each column is summed on its own, so where the steps start changes no result. */
static inline int64_t FN(lead_columns)(const TS *row, int far)
{
    return far ? (int64_t)(cbn_bytes_to_line(row) / sizeof(TS)) : 0;
}

/* Columns of the step at j0 of a tile w wide: `lead` first (when not 0), then `step`. */
static inline int64_t FN(step_columns)(int64_t j0, int64_t lead, int64_t step, int64_t w)
{
    const int64_t n = j0 == 0 && lead ? lead : step;
    return n < w - j0 ? n : w - j0;
}

/* The software prefetches of a step over rows [r, r + rows) of columns [j0, t.w) of the tile
 * in p (rows C values apart): the next step's rows when rows are far apart, else the rows
 * `ahead` on (once per step, at j0 == 0). */
static inline void FN(prefetch_tile_step)(const TS *p, int64_t C, FN(tile) t, int far,
                                          int64_t ahead, int64_t r, int64_t rows, int64_t j0)
{
    for (int64_t k = 0; k < rows; k += 4) {
        if (far) FN(prefetch_next_rows)(p + t.c0, C, r + rows - 4 + k, t.r1, j0, t.w);
        else if (j0 == 0) FN(prefetch_rows_ahead)(p, C, r + k, t.r1, ahead);
    }
}

/* prefetch_tile_step for the backward sums' arrays: x, dy and (with an activation) y */
static inline void FN(prefetch_dy_tile_step)(const TS *x, const TS *dy, const TS *y, int64_t C,
                                             FN(tile) t, int far, int64_t ahead, int64_t r,
                                             int64_t rows, int64_t j0)
{
    FN(prefetch_tile_step)(x, C, t, far, ahead, r, rows, j0);
    FN(prefetch_tile_step)(dy, C, t, far, ahead, r, rows, j0);
    if (y) FN(prefetch_tile_step)(y, C, t, far, ahead, r, rows, j0);
}

#ifdef FLOAT_SUM_BLOCK
#if FLOAT_SUM_BLOCK != 8
#error "the channels-last float blocks are written for 8 rows"
#endif
/* Columns [j0, j0 + n) of 8 rows of p (C values apart) as the float blocks read them: the
 * array itself, rows *stride = C apart, or for float16 the rows widened into buf, WIDE_BUF
 * apart. One base and one stride per array (not 8 row pointers) leave registers for the
 * arithmetic: with 8 pointers for each of x, dy and y, GCC kept them in vector registers. */
static inline const TV *FN(rows8_view)(TV *buf, const TS *p, int64_t C, int64_t n,
                                       int64_t *stride)
{
#ifdef WIDEN_BLOCK
    for (int k = 0; k < 8; k++) WIDEN_BLOCK(p + k * C, buf + k * WIDE_BUF, n);
    *stride = WIDE_BUF;
    return buf;
#else
    (void)buf, (void)n;
    *stride = C;
    return (const TV *)p;
#endif
}

/* The float blocks of cl_shifted_sums (see FLOAT_SUM_BLOCK): 8 rows per step, each column's 8
 * differences and squares added pairwise in float, then in double to s[j], q[j]. pivot: float
 * values (as_pivot). Returns the first row left. */
static int64_t FN(cl_shifted_blocks)(const TS *x, int64_t C, FN(tile) t,
                                     const double *restrict pivot, double *restrict s,
                                     double *restrict q)
{
    const int far = t.prefetch && C > t.w;
    const int64_t step = FN(columns_per_step)(far, t.w);
    const int64_t ahead = FN(rows_ahead)(C);
    TV b[8 * WIDE_BUF];
    int64_t r = t.r0;
    for (; r + 8 <= t.r1; r += 8) {
        const TS *x0 = x + r * C + t.c0;
        for (int64_t j0 = 0; j0 < t.w; j0 += step) {
            const int64_t m = j0 + step < t.w ? step : t.w - j0;
            if (t.prefetch) FN(prefetch_tile_step)(x, C, t, far, ahead, r, 8, j0);
            int64_t xs;
            const TV *restrict w = FN(rows8_view)(b, x0 + j0, C, m, &xs);
            const double *restrict pv = pivot + j0;
            double *restrict sj = s + j0, *restrict qj = q + j0;
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                const T p = (T)pv[j];
                const T d0 = WIDEN_V(w[j]) - p, d1 = WIDEN_V(w[j + xs]) - p,
                        d2 = WIDEN_V(w[j + 2 * xs]) - p, d3 = WIDEN_V(w[j + 3 * xs]) - p,
                        d4 = WIDEN_V(w[j + 4 * xs]) - p, d5 = WIDEN_V(w[j + 5 * xs]) - p,
                        d6 = WIDEN_V(w[j + 6 * xs]) - p, d7 = WIDEN_V(w[j + 7 * xs]) - p;
                sj[j] += (double)(((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7)));
                qj[j] += (double)((MULADDF(d1, d1, d0 * d0) + MULADDF(d3, d3, d2 * d2)) +
                                  (MULADDF(d5, d5, d4 * d4) + MULADDF(d7, d7, d6 * d6)));
            }
        }
    }
    return r;
}
#endif

/* Column sums of the tile: s[j] = sum_r (x - pivot[j]), q[j] = sum_r (x - pivot[j])^2.
 * Four rows per step keep the accumulators' memory traffic below the data's. */
static void FN(cl_shifted_sums)(const TS *x, int64_t C, FN(tile) t, const double *restrict pivot,
                                double *restrict s, double *restrict q)
{
    const int far = t.prefetch && C > t.w;
    const int64_t step = FN(columns_per_step)(far, t.w);
    const int64_t ahead = FN(rows_ahead)(C);
    TV b0[WIDE_BUF], b1[WIDE_BUF], b2[WIDE_BUF], b3[WIDE_BUF];
    int64_t r = t.r0;
#ifdef FLOAT_SUM_BLOCK
    if (!t.exact) r = FN(cl_shifted_blocks)(x, C, t, pivot, s, q);
#endif
    for (; r + 4 <= t.r1; r += 4) {
        const TS *x0 = x + r * C + t.c0, *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C;
        for (int64_t j0 = 0; j0 < t.w; j0 += step) {
            const int64_t m = j0 + step < t.w ? step : t.w - j0;
            if (t.prefetch) FN(prefetch_tile_step)(x, C, t, far, ahead, r, 4, j0);
            const TV *restrict w0 = WIDE_VIEW(b0, x0 + j0, m),
                    *restrict w1 = WIDE_VIEW(b1, x1 + j0, m),
                    *restrict w2 = WIDE_VIEW(b2, x2 + j0, m),
                    *restrict w3 = WIDE_VIEW(b3, x3 + j0, m);
            const double *restrict pv = pivot + j0;
            double *restrict sj = s + j0, *restrict qj = q + j0;
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                const double p = pv[j];
                const double d0 = (double)WIDEN_V(w0[j]) - p, d1 = (double)WIDEN_V(w1[j]) - p,
                             d2 = (double)WIDEN_V(w2[j]) - p, d3 = (double)WIDEN_V(w3[j]) - p;
                sj[j] += (d0 + d1) + (d2 + d3);
                qj[j] += MULADD(d1, d1, d0 * d0) + MULADD(d3, d3, d2 * d2);
            }
        }
    }
    for (; r < t.r1; r++) {
        const TS *restrict xr = x + r * C + t.c0;
#pragma omp simd
        for (int64_t j = 0; j < t.w; j++) {
            const double d = (double)WIDEN(xr[j]) - pivot[j];
            s[j] += d;
            q[j] = MULADD(d, d, q[j]);
        }
    }
}

#ifdef FLOAT_SUM_BLOCK
/* The gradient at column j of row k of a rows8_view (GRAD_V with a row stride). */
#define GRAD_ROW(g, gs, yv, ys, k, j)                                                           \
    ((yv) ? FN(relu_grad)(WIDEN_V((g)[(j) + (k) * (gs)]), WIDEN_V((yv)[(j) + (k) * (ys)]))     \
          : WIDEN_V((g)[(j) + (k) * (gs)]))

/* The float blocks of cl_dy_sums_body (see FLOAT_SUM_BLOCK): 8 rows per step, added pairwise in
 * float per column, then in double. Returns the first row left. */
APPLY_INLINE int64_t FN(cl_dy_blocks)(const TS *x, const TS *dy, const TS *y, int64_t C,
                                       FN(tile) t, const T *restrict center, double *restrict s,
                                       double *restrict q, double *restrict d)
{
    const int far = t.prefetch && C > t.w;
    const int64_t step = FN(columns_per_step)(far, t.w);
    const int64_t ahead = FN(rows_ahead)(C);
    TV xb[8 * WIDE_BUF], gb[8 * WIDE_BUF], yb[8 * WIDE_BUF];
    int64_t r = t.r0;
    for (; r + 8 <= t.r1; r += 8) {
        const int64_t o0 = r * C + t.c0;
        const int64_t lead = FN(lead_columns)(x + o0, far);
        for (int64_t j0 = 0, n; j0 < t.w; j0 += n) {
            n = FN(step_columns)(j0, lead, step, t.w);
            if (t.prefetch) FN(prefetch_dy_tile_step)(x, dy, y, C, t, far, ahead, r, 8, j0);
            int64_t xs, gs, ys = 0;
            const TV *restrict xv = FN(rows8_view)(xb, x + o0 + j0, C, n, &xs);
            const TV *restrict g = FN(rows8_view)(gb, dy + o0 + j0, C, n, &gs);
            const TV *restrict yv = y ? FN(rows8_view)(yb, y + o0 + j0, C, n, &ys) : NULL;
            const T *restrict cj = center + j0;
            double *restrict sj = s + j0, *restrict qj = q + j0, *restrict dj = d + j0;
#pragma omp simd
            for (int64_t j = 0; j < n; j++) {
                const T m = cj[j];
                const T e0 = GRAD_ROW(g, gs, yv, ys, 0, j), e1 = GRAD_ROW(g, gs, yv, ys, 1, j),
                        e2 = GRAD_ROW(g, gs, yv, ys, 2, j), e3 = GRAD_ROW(g, gs, yv, ys, 3, j),
                        e4 = GRAD_ROW(g, gs, yv, ys, 4, j), e5 = GRAD_ROW(g, gs, yv, ys, 5, j),
                        e6 = GRAD_ROW(g, gs, yv, ys, 6, j), e7 = GRAD_ROW(g, gs, yv, ys, 7, j);
                const T c0 = WIDEN_V(xv[j]) - m, c1 = WIDEN_V(xv[j + xs]) - m,
                        c2 = WIDEN_V(xv[j + 2 * xs]) - m, c3 = WIDEN_V(xv[j + 3 * xs]) - m,
                        c4 = WIDEN_V(xv[j + 4 * xs]) - m, c5 = WIDEN_V(xv[j + 5 * xs]) - m,
                        c6 = WIDEN_V(xv[j + 6 * xs]) - m, c7 = WIDEN_V(xv[j + 7 * xs]) - m;
                sj[j] += (double)(((e0 + e1) + (e2 + e3)) + ((e4 + e5) + (e6 + e7)));
                qj[j] += (double)((MULADDF(e1, c1, e0 * c0) + MULADDF(e3, c3, e2 * c2)) +
                                  (MULADDF(e5, c5, e4 * c4) + MULADDF(e7, c7, e6 * c6)));
                dj[j] += (double)(((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)));
            }
        }
    }
    return r;
}
#undef GRAD_ROW
#endif

/* Column sums s[j] = sum_r g, q[j] = sum_r g*(x - center[j]), d[j] = sum_r (x - center[j])
 * with g = GRAD(dy, y), four rows per step. Written once; the two calls below specialize it for
 * y == NULL and y != NULL, so the mask costs nothing when there is no activation. */
APPLY_INLINE void FN(cl_dy_sums_body)(const TS *x, const TS *dy, const TS *y, int64_t C,
                                       FN(tile) t,
                                       const T *restrict center, double *restrict s,
                                       double *restrict q, double *restrict d)
{
    const int far = t.prefetch && C > t.w;
    const int64_t step = FN(columns_per_step)(far, t.w);
    const int64_t ahead = FN(rows_ahead)(C);
    TV xb[4][WIDE_BUF], gb[4][WIDE_BUF], yb[4][WIDE_BUF];
    int64_t r = t.r0;
#ifdef FLOAT_SUM_BLOCK
    if (!t.exact) r = FN(cl_dy_blocks)(x, dy, y, C, t, center, s, q, d);
#endif
    for (; r + 4 <= t.r1; r += 4) {
        const int64_t o0 = r * C + t.c0;
        const int64_t lead = FN(lead_columns)(x + o0, far);
        for (int64_t j0 = 0, n; j0 < t.w; j0 += n) {
            n = FN(step_columns)(j0, lead, step, t.w);
            if (t.prefetch) FN(prefetch_dy_tile_step)(x, dy, y, C, t, far, ahead, r, 4, j0);
            /* the 4 rows' columns [j0, j0 + n) */
            const int64_t o = o0 + j0;
            const TV *restrict xw0 = WIDE_VIEW(xb[0], x + o, n),
                    *restrict xw1 = WIDE_VIEW(xb[1], x + o + C, n),
                    *restrict xw2 = WIDE_VIEW(xb[2], x + o + 2 * C, n),
                    *restrict xw3 = WIDE_VIEW(xb[3], x + o + 3 * C, n);
            const TV *restrict g0 = WIDE_VIEW(gb[0], dy + o, n),
                    *restrict g1 = WIDE_VIEW(gb[1], dy + o + C, n),
                    *restrict g2 = WIDE_VIEW(gb[2], dy + o + 2 * C, n),
                    *restrict g3 = WIDE_VIEW(gb[3], dy + o + 3 * C, n);
            const TV *restrict y0 = y ? WIDE_VIEW(yb[0], y + o, n) : NULL,
                    *restrict y1 = y ? WIDE_VIEW(yb[1], y + o + C, n) : NULL,
                    *restrict y2 = y ? WIDE_VIEW(yb[2], y + o + 2 * C, n) : NULL,
                    *restrict y3 = y ? WIDE_VIEW(yb[3], y + o + 3 * C, n) : NULL;
            const T *restrict cj = center + j0;
            double *restrict sj = s + j0, *restrict qj = q + j0, *restrict dj = d + j0;
#pragma omp simd
            for (int64_t j = 0; j < n; j++) {
                const double m = (double)cj[j];
                const double e0 = (double)GRAD_V(g0, y0, j), e1 = (double)GRAD_V(g1, y1, j),
                             e2 = (double)GRAD_V(g2, y2, j), e3 = (double)GRAD_V(g3, y3, j);
                const double x0 = (double)WIDEN_V(xw0[j]) - m, x1 = (double)WIDEN_V(xw1[j]) - m,
                             x2 = (double)WIDEN_V(xw2[j]) - m, x3 = (double)WIDEN_V(xw3[j]) - m;
                sj[j] += (e0 + e1) + (e2 + e3);
                qj[j] += MULADD(e1, x1, e0 * x0) + MULADD(e3, x3, e2 * x2);
                dj[j] += (x0 + x1) + (x2 + x3);
            }
        }
    }
    for (; r < t.r1; r++) {
        const int64_t o = r * C + t.c0;
#pragma omp simd
        for (int64_t j = 0; j < t.w; j++) {
            const double e = (double)GRAD(dy, y, o + j),
                         xc = (double)WIDEN(x[o + j]) - (double)center[j];
            s[j] += e;
            q[j] = MULADD(e, xc, q[j]);
            d[j] += xc;
        }
    }
}

static void FN(cl_dy_sums)(const TS *x, const TS *dy, const TS *y, int64_t C, FN(tile) t,
                           const T *restrict center, double *restrict s, double *restrict q,
                           double *restrict d)
{
    if (y) FN(cl_dy_sums_body)(x, dy, y, C, t, center, s, q, d);
    else FN(cl_dy_sums_body)(x, dy, NULL, C, t, center, s, q, d);
}

static void FN(cl_reduce_unit)(const FN(job) *jb, int64_t u, int exact)
{
    const cbn_plan *p = &jb->plan;
    FN(tile) t = FN(unit_tile)(p, u);
    t.exact = exact;
    const int64_t at = (t.r0 / p->row_block) * p->C + t.c0, BC = p->n_row_blocks * p->C;
    double *s = jb->partials + at, *q = s + BC, *d = q + BC;     /* d: backward's third sum */
    for (int64_t i = 0; i < FN(n_sums)(jb->op); i++)
        memset(s + i * BC, 0, sizeof(double) * (size_t)t.w);
    if (jb->op == OP_TRAIN) FN(cl_shifted_sums)(jb->x, p->C, t, jb->pivot + t.c0, s, q);
    else FN(cl_dy_sums)(jb->x, jb->dy, jb->y, p->C, t, jb->backward.mean + t.c0, s, q, d);
}

/* Channel sums over row blocks, in row-block order, for channels [c0, c1) (vectorized across
 * channels): sum i at jb->sums[i*C + c]. */
static void FN(sum_row_block_partials)(const FN(job) *jb, int64_t c0, int64_t c1)
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
    if (jb->op != OP_BACKWARD) return;
    double *restrict d = jb->sums + 2 * C;
    const double *pd = jb->partials + 2 * B * C;
    for (int64_t c = c0; c < c1; c++) d[c] = 0.0;
    for (int64_t rb = 0; rb < B; rb++)
#pragma omp simd
        for (int64_t c = c0; c < c1; c++) d[c] += pd[rb * C + c];
}

/* Values of the on-stack block that channels-last streaming computes rows into: a whole tile
 * row, and several rows when they are contiguous. */
#define CL_STREAM_BUF (CBN_MAX_COL_TILE > CBN_STREAM_BLOCK ? CBN_MAX_COL_TILE : CBN_STREAM_BLOCK)

/* The arithmetic of one row of the elementwise pass over w columns, on views (the row itself,
 * or a widened block); coef + j0: the columns' coefficients. */
APPLY_INLINE void FN(cl_apply_row_view)(FN(op) op, int relu, T *const *coef, int64_t j0,
                                         const TV *xr, const TV *g, const TV *yr, const TV *rr,
                                         TV *orow, TV *dr, int64_t w)
{
    const T *restrict center = coef[K_CENTER] + j0, *restrict scale = coef[K_SCALE] + j0,
            *restrict shift = coef[K_SHIFT] + j0, *restrict xmu = coef[K_XMU] + j0;
    const T lo = relu ? (T)0 : (T)-INFINITY;
    if (op == OP_INFER) {
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
            T v = INFER_VALUE(WIDEN_V(xr[j]), scale[j], shift[j]);
            if (rr) v = v + WIDEN_V(rr[j]);
            orow[j] = NARROW_V(v < lo ? lo : v);
        }
    } else if (op == OP_TRAIN) {
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
            T v = TRAIN_VALUE(WIDEN_V(xr[j]), center[j], scale[j], shift[j]);
            if (rr) v = v + WIDEN_V(rr[j]);
            orow[j] = NARROW_V(v < lo ? lo : v);
        }
    } else if (op == OP_FROZEN_DX) {
        /* one loop per op, not a select inside one (see apply_view); frozen statistics need
         * neither the sums nor x */
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
            const T e = GRAD_V(g, yr, j);
            orow[j] = NARROW_V(FROZEN_DX_VALUE(e, scale[j]));
            if (dr) dr[j] = NARROW_V(e);
        }
    } else {
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
            const T e = GRAD_V(g, yr, j);
            orow[j] = NARROW_V(BACKWARD_VALUE(e, WIDEN_V(xr[j]), center[j], scale[j], shift[j],
                                              xmu[j]));
            if (dr) dr[j] = NARROW_V(e);
        }
    }
}

/* Rows of the elementwise pass, one row per step: several rows per step would share the
 * coefficient loads, but rows 4 KiB apart (C = 1024 floats) then alias in the store buffer.
 * res, dres: the residual (forward) and its gradient (backward) as in run_apply, rows `stride`
 * apart like the others (or NULL). float16 rows are widened WIDE_BUF columns at a time. */
APPLY_INLINE void FN(cl_apply_rows_body)(FN(op) op, int relu, T *const *coef, const TS *x,
                                          const TS *dy, const TS *y, const TS *res, TS *o,
                                          TS *dres, int64_t rows, int64_t stride, int64_t w,
                                          int prefetch)
{
#ifdef WIDEN_BLOCK
    FN(wide_block) b;
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t at = r * stride;
#if defined(__GNUC__)
        /* rows far apart: ask for the next output row (for writing) while this one is computed,
         * since the hardware prefetcher does not follow the jump and each store would wait for
         * its line */
        if (prefetch && stride > w && r + 1 < rows)
            for (size_t k = 0; k < sizeof(TS) * (size_t)w; k += 64)
                __builtin_prefetch((char *)(o + at + stride) + k, 1, 3);
#endif
        const TS *g = dy ? dy + at : NULL, *yr = y ? y + at : NULL, *rr = res ? res + at : NULL;
        TS *dr = dres ? dres + at : NULL;
        int64_t j0 = 0;
#ifdef HALF_VECTORS
        j0 = FN(apply_half_vectors)(op, relu, (const T *const *)coef, 1, x + at, g, yr, rr,
                                    o + at, dr, w);
        if (j0 == w) continue;
#endif
#ifdef WIDEN_BLOCK
        for (; j0 < w; j0 += WIDE_BUF) {
            const int64_t m = w - j0 < WIDE_BUF ? w - j0 : WIDE_BUF;
            const T *xw, *gw, *yw, *rw;
            FN(widen_apply_inputs)(op, &b, x + at + j0, g ? g + j0 : NULL, yr ? yr + j0 : NULL,
                                   rr ? rr + j0 : NULL, m, &xw, &gw, &yw, &rw);
            FN(cl_apply_row_view)(op, relu, coef, j0, xw, gw, yw, rw, b.out,
                                  dr ? b.dres : NULL, m);
            FN(narrow_apply_outputs)(&b, o + at + j0, dr ? dr + j0 : NULL, m);
        }
#else
        FN(cl_apply_row_view)(op, relu, coef, j0, x + at + j0, g ? g + j0 : NULL,
                              yr ? yr + j0 : NULL, rr ? rr + j0 : NULL, o + at + j0,
                              dr ? dr + j0 : NULL, w - j0);
#endif
    }
}

/* cl_apply_rows_body specialized for each combination of the optional arrays (as run_apply). */
static void FN(cl_apply_rows)(FN(op) op, int relu, T *const *coef, const TS *x, const TS *dy,
                              const TS *y, const TS *res, TS *o, TS *dres, int64_t rows,
                              int64_t stride, int64_t w, int prefetch)
{
#define CL_APPLY_ROWS(Y, RES, DRES)                                                             \
    FN(cl_apply_rows_body)(op, relu, coef, x, dy, Y, RES, o, DRES, rows, stride, w, prefetch)
    if (y) {
        if (dres) CL_APPLY_ROWS(y, NULL, dres);
        else CL_APPLY_ROWS(y, NULL, NULL);
    } else if (dres) {
        CL_APPLY_ROWS(NULL, NULL, dres);
    } else if (res) {
        CL_APPLY_ROWS(NULL, res, NULL);
    } else {
        CL_APPLY_ROWS(NULL, NULL, NULL);
    }
#undef CL_APPLY_ROWS
}

/* Rows of the elementwise pass with per-column coefficients, starting at element `off` of the
 * job's arrays; with jb->stream, rows are computed into buf (and the residual's gradient into
 * dbuf; room for buf_len >= w values each) and streamed out: several at a time when they are
 * contiguous (stride == w), so that the partial lines at the ends of each streamed block are
 * few. */
static void FN(apply_rows)(const FN(job) *jb, T *const *coef, int64_t off, int64_t rows,
                           int64_t stride, int64_t w, TS *buf, TS *dbuf, int64_t buf_len)
{
    const TS *x = jb->x + off, *dy = jb->dy ? jb->dy + off : NULL,
             *y = jb->y ? jb->y + off : NULL;
    const TS *res = jb->residual ? jb->residual + off : NULL;
    TS *out = jb->out + off, *dres = jb->d_residual ? jb->d_residual + off : NULL;
    const FN(op) op = FN(apply_op)(jb);
    if (!jb->stream) {
        FN(cl_apply_rows)(op, jb->relu, coef, x, dy, y, res, out, dres, rows, stride, w,
                          jb->plan.prefetch);
        return;
    }
    const int64_t per_block = stride == w ? buf_len / w : 1;
    for (int64_t r = 0, n; r < rows; r += n) {
        const int64_t o = r * stride;
        n = rows - r < per_block ? rows - r : per_block;
        FN(cl_apply_rows)(op, jb->relu, coef, x + o, dy ? dy + o : NULL, y ? y + o : NULL,
                          res ? res + o : NULL, buf, dres ? dbuf : NULL, n, stride, w,
                          jb->plan.prefetch);
        cbn_stream_bytes(out + o, buf, sizeof(TS) * (size_t)(n * w));
        if (dres) cbn_stream_bytes(dres + o, dbuf, sizeof(TS) * (size_t)(n * w));
    }
}

static void FN(cl_apply_unit)(const FN(job) *jb, int64_t u)
{
    const cbn_plan *p = &jb->plan;
    const FN(tile) t = FN(unit_tile)(p, u);
    T *coef[N_COEF];
    for (int i = 0; i < N_COEF; i++) coef[i] = jb->coef[i] + t.c0;
    TS buf[CL_STREAM_BUF], dbuf[CL_STREAM_BUF];
    FN(apply_rows)(jb, coef, t.r0 * p->C + t.c0, t.r1 - t.r0, p->C, t.w, buf, dbuf,
                   CL_STREAM_BUF);
}

/* Elementwise pass over row block rb across all channels, row by row: consecutive rows are
 * adjacent, so the pass reads one contiguous stream, where a column tile's rows (C values
 * apart) would each restart the hardware prefetcher. */
static void FN(cl_apply_block)(const FN(job) *jb, int64_t rb)
{
    const cbn_plan *p = &jb->plan;
    const int64_t C = p->C, r0 = rb * p->row_block;
    const int64_t r1 = r0 + p->row_block < p->rows ? r0 + p->row_block : p->rows;
    TS buf[CL_STREAM_BUF], dbuf[CL_STREAM_BUF];
    if (p->n_col_tiles == 1 || !jb->stream) {      /* whole rows (buf: streaming only) */
        FN(apply_rows)(jb, jb->coef, r0 * C, r1 - r0, C, C, buf, dbuf, CL_STREAM_BUF);
        return;
    }
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c0 = 0; c0 < C; c0 += p->col_tile) {
            T *coef[N_COEF];
            for (int i = 0; i < N_COEF; i++) coef[i] = jb->coef[i] + c0;
            FN(apply_rows)(jb, coef, r * C + c0, 1, C,
                           c0 + p->col_tile < C ? p->col_tile : C - c0, buf, dbuf,
                           CL_STREAM_BUF);
        }
}
