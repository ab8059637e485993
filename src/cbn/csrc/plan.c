/* plan.c - shape -> chunking and thread count (see plan.h). */
#include "plan.h"
#include "thread_limit.h"

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void cbn_make_plan(cbn_plan *p, int64_t N, int64_t C, int64_t S, cbn_layout layout,
                   int n_threads, int64_t column_max_s)
{
    /* Canonical view: one channel is one contiguous run; S == 1 is a row view. */
    int channels_last = (layout == CBN_CHANNELS_LAST);
    if (C == 1) {                 /* all values of the only channel are contiguous */
        S = N * S;
        N = 1;
        channels_last = 0;
    } else if (!channels_last && S == 1) {
        channels_last = 1;        /* (N, C) channels-first is x[r][c] */
    }

    p->channels_last = channels_last;
    p->N = N;
    p->C = C;
    p->S = S;
    p->M = N * S;
    p->rows = N * S;
    p->chunk = p->n_chunks = p->row_block = p->col_tile = 0;
    p->n_row_blocks = p->n_col_tiles = 0;
    p->whole_tiles = 0;

    p->columns = !channels_last && S <= column_max_s;
    p->carry_runs = !channels_last && !p->columns && S <= CBN_CARRY_MAX_S;
    if (p->columns) {             /* one unit per channel: channels are never split */
        p->chunk = p->M;
        p->n_chunks = p->M > 0 ? 1 : 0;
        p->n_units = C * p->n_chunks;
    } else if (!channels_last) {
        p->chunk = CBN_CHUNK_VALUES;
        p->n_chunks = p->M > 0 ? ceil_div(p->M, p->chunk) : 0;
        p->n_units = C * p->n_chunks;
    } else {
        p->col_tile = C < CBN_MAX_COL_TILE ? C : CBN_MAX_COL_TILE;
        if (p->col_tile < 1) p->col_tile = 1;
        p->row_block = CBN_UNIT_VALUES / p->col_tile;
        if (p->row_block < 1) p->row_block = 1;
        p->n_row_blocks = ceil_div(p->rows, p->row_block);
        p->n_col_tiles = C > 0 ? ceil_div(C, p->col_tile) : 0;
        p->n_units = p->n_row_blocks * p->n_col_tiles;
        p->whole_tiles = p->n_row_blocks == 1;
    }

    int64_t by_size = (N * C * S) / CBN_MIN_VALUES_PER_THREAD;
    int64_t t = n_threads < 1 ? 1 : n_threads;
    if (t > by_size) t = by_size;
    if (t > p->n_units) t = p->n_units;
    if (t > 1) t = cbn_thread_limit((int)t);   /* the CPUs offered; 1 after fork */
    if (t < 1) t = 1;
    p->n_threads = (int)t;
    p->prefetch = 0;
}
