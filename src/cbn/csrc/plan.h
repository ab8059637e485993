/* plan.h - how a call's work is cut into chunks and spread over threads.
 * Chunk bounds depend only on the shape, never on the thread count: that is what makes results
 * bit-identical for any n_threads. */
#ifndef CBN_PLAN_H
#define CBN_PLAN_H

#include <stdint.h>
#include "cbn.h"

/* Values per chunk: small enough that a chunk read from DRAM is still in L1/L2 for its second
 * pass, large enough that per-chunk bookkeeping is negligible. */
#define CBN_CHUNK_VALUES 4096
/* Channels-first: bytes (inputs and output) of the channel group that one thread reduces and
 * then normalizes while it is still in its L2 cache. Grouping changes only the traversal, never
 * a result. */
#ifndef CBN_GROUP_BYTES
#define CBN_GROUP_BYTES (768 * 1024)
#endif
/* Channels-last: widest column tile, and values per (row block x column tile) unit. */
#ifndef CBN_MAX_COL_TILE
#define CBN_MAX_COL_TILE 512
#endif
#if CBN_MAX_COL_TILE < 1 || CBN_MAX_COL_TILE > 4096
#error "CBN_MAX_COL_TILE must be in [1, 4096] (a tile's row is buffered on the stack)"
#endif
#define CBN_UNIT_VALUES 65536
/* Channels-first runs this short (S values) are processed as columns, at most
 * CBN_COLUMN_WIDTH columns (whole channels) at a time. Backward, whose columns carry three sums
 * and read two arrays, goes by runs from fewer values (float32 on Zen 4, 2 threads: runs of 64
 * took 0.79-0.84x the columns' time, of 100 0.77-0.90x; runs of 49 took 1.3-1.9x). */
#ifndef CBN_COLUMN_MAX_S
#define CBN_COLUMN_MAX_S 128
#endif
#ifndef CBN_BACKWARD_COLUMN_MAX_S
#define CBN_BACKWARD_COLUMN_MAX_S 56
#endif
#define CBN_COLUMN_WIDTH 1024
#if CBN_COLUMN_MAX_S > CBN_COLUMN_WIDTH || CBN_BACKWARD_COLUMN_MAX_S > CBN_COLUMN_WIDTH
#error "CBN_COLUMN_MAX_S must not exceed CBN_COLUMN_WIDTH: a column group holds whole channels"
#endif
/* Channels-first backward with runs of at most this many values (longer than the column bound)
 * on data that stays in cache (under CBN_PREFETCH_MIN_BYTES) reduces each chunk in the order of
 * its values, its float lanes carried from run to run (plan.carry_runs), also where threads take
 * whole channel groups, whose reduce otherwise reads a group in storage order. Adding up the
 * lanes of every run took half of 8x64x8x8's reduce; carried, 16x64x8x8 took 0.89x the time and
 * 16x128x8x8 0.81x (2 threads, AMD Zen 4). Larger data keeps storage order, which streams from
 * DRAM better (in value order 256x256x8x8 took 1.24x). */
#ifndef CBN_CARRY_MAX_S
#define CBN_CARRY_MAX_S 256
#endif
/* Outputs of at least this many bytes are written with streaming stores: they would not stay
 * in cache anyway, and streaming saves reading each output line before writing it. */
#ifndef CBN_STREAM_MIN_BYTES
#define CBN_STREAM_MIN_BYTES (16.0 * 1024 * 1024)
#endif
/* The same for channels-first column mode's reducing calls (training, backward), from half the
 * size: their output rows are short pieces far apart (3.9 KB every 392 KB for 32x2048x7x7),
 * whose ordinary stores each wait for their line to be read. Streamed, 8-16 MB such calls
 * took 0.88-0.95x the time (AMD Zen 4, 2 threads; 32x2048x7x7 training 0.70 against
 * 0.75-0.79 ms, backward 1.22 against 1.37), and their output is not left in cache.
 * Inference is not a column-mode call and keeps its cached output (12.8 MB: 0.23 ms, streamed
 * 0.78 ms when run back to back). */
#ifndef CBN_COLUMN_STREAM_MIN_BYTES
#define CBN_COLUMN_STREAM_MIN_BYTES (CBN_STREAM_MIN_BYTES / 2)
#endif
/* Values computed in L1 before being streamed out. */
#define CBN_STREAM_BLOCK 1024
/* Inputs smaller than this stay in cache between calls; the kernels then skip their software
 * prefetches, which would only cost instructions. */
#ifndef CBN_PREFETCH_MIN_BYTES
#define CBN_PREFETCH_MIN_BYTES (1024 * 1024)
#endif
/* Below this many values per thread, waking another thread costs more than it saves. */
#ifndef CBN_MIN_VALUES_PER_THREAD
#define CBN_MIN_VALUES_PER_THREAD 16384
#endif
#if CBN_MIN_VALUES_PER_THREAD < 1
#error "CBN_MIN_VALUES_PER_THREAD must be at least 1"
#endif

typedef struct {
    int channels_last;      /* canonical view: 0 -> x[n][c][s], 1 -> x[r][c] */
    int columns;            /* channels-first with short runs, done as columns of x[n][c*S+s] */
    int carry_runs;         /* channels-first, not columns, runs of at most CBN_CARRY_MAX_S:
                             * chunks reduced in value order, lanes carried across runs */
    int64_t N, C, S;        /* channels-first sizes; channels-last uses rows = N*S, S = 1 */
    int64_t rows;           /* channels-last rows */
    int64_t M;              /* values per channel */
    int64_t chunk;          /* channels-first: values per chunk */
    int64_t n_chunks;       /* channels-first: chunks per channel */
    int64_t row_block;      /* channels-last: rows per unit */
    int64_t col_tile;       /* channels-last: columns per unit */
    int64_t n_row_blocks, n_col_tiles;
    int whole_tiles;        /* channels-last with one row block: each column tile holds all the
                             * values of its channels, so it is a call of its own */
    int64_t n_units;        /* chunks (channels-first: C*n_chunks) or blocks x tiles */
    int n_threads;          /* threads this call will use */
    int prefetch;           /* software prefetch on (set by the kernels: the data is large) */
} cbn_plan;

/* Fills *p for x of (N, C, S, layout), choosing the cheaper equivalent view (C == 1 or S == 1
 * collapse to a contiguous or row view) and at most n_threads threads; channels-first runs of at
 * most column_max_s values go as columns. */
void cbn_make_plan(cbn_plan *p, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                   int n_threads, int64_t column_max_s);

/* Which code path a kernel call takes (internal, for the tests that check each test case
 * reaches the path it is meant to; not part of cbn.h). */
typedef enum { CBN_PATH_TRAIN, CBN_PATH_BACKWARD, CBN_PATH_INFER } cbn_path_op;
typedef struct {
    cbn_plan plan;          /* the plan, as the call makes it */
    int stream;             /* the output is written with streaming stores */
    int cf_groups;          /* channels-first reduce: threads take whole channel groups (always
                             * with columns); 0: ranges of chunks, channels cut between threads */
    int cf_apply_only;      /* channels-first pass without a reduce (inference) */
    int cl_whole_tiles;     /* channels-last: each column tile done whole, no separate reduce */
} cbn_path;

/* Fills *path for cbn_train_forward / cbn_backward / cbn_infer (no residual) on the given
 * sizes and element type; the arguments are those of the kernels. */
void cbn_plan_path_f32(cbn_path *path, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                       int n_threads, cbn_path_op op);
void cbn_plan_path_f64(cbn_path *path, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                       int n_threads, cbn_path_op op);

#endif
