/* kernels_impl.h - cbn's batch-norm kernels, written once for both element types.
 *
 * Included by cbn_f32.c and cbn_f64.c with T (element type), SFX (name suffix) and
 * STATS_MAX_CANCEL defined; it gives the entry points of include/cbn.h for that type.
 * cbn_f16.c and cbn_bf16.c also define NARROW_STORAGE, TS (the type the N*C*S tensors are
 * stored in: 16 bits), WIDEN/NARROW (stored value -> T, exact; T -> stored value, rounded
 * once) and WIDEN_BLOCK/NARROW_BLOCK (the same for n values): they compute in T = float, so
 * their results are float32's on the widened inputs, rounded once. Everything that fixes the
 * summation order (the plan, chunks, tiles, groups) is decided from T, never TS, so that it is
 * float32's too.
 * Every kernel that normalizes has the same shape:
 *   1. reduce:   each chunk of a channel (channels-first) or each row block x column tile
 *                (channels-last) gives per-channel partial sums, in double;
 *   2. finalize: a channel's partials are added in chunk order, giving its coefficients;
 *   3. apply:    one elementwise pass writes the output from the coefficients.
 * The split kernels run the reduce (cbn_batch_stats, cbn_backward_reduce) or the apply
 * (cbn_normalize, cbn_backward_dx) alone; inference is an apply with folded coefficients.
 * Backward through frozen statistics (cbn_infer_backward) is backward's reduce around the
 * running mean with its own coefficients and the apply dx = scale*g. A residual is added in the
 * forward apply (y = act(bn(x) + r)); backward's apply writes its gradient beside dx.
 * Chunk bounds depend only on the shape and partials are added in a fixed order, so results are
 * bit-identical for every thread count.
 *
 * The parts, each read top to bottom:
 *   kernels_common.h          macros, the job, the thread team, run loops, finalize formulas
 *   kernels_channels_last.h   channels-last units: sums and elementwise rows (the column mode
 *                             reuses them)
 *   kernels_channels_last_call.h  channels-last finalize and thread bodies (row blocks, whole
 *                             tiles)
 *   kernels_channels_first.h  channels-first phases, including short runs done as columns
 *   kernels_entry.h           argument checks, plan and scratch, the public functions
 *   kernels_plan_path.h       which path a call takes (an internal query for the tests)
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cbn.h"
#include "plan.h"
#include "omp_compat.h"
#include "stream_store.h"
#include "scratch.h"
#include "contention.h"

#ifndef STATS_MAX_CANCEL
#error "define STATS_MAX_CANCEL before including kernels_impl.h"
#endif

/* Storage type of the tensors: T itself unless the instantiation file chose a narrower one. */
#ifndef NARROW_STORAGE
#define TS T
#define WIDEN(v) (v)
#define NARROW(v) (v)
#endif

#include "kernels_common.h"
#include "kernels_channels_last.h"
#include "kernels_channels_last_call.h"
#include "kernels_channels_first.h"
#include "kernels_entry.h"
#ifndef NARROW_STORAGE            /* 16-bit storage plans as float32 does: its query serves */
#include "kernels_plan_path.h"
#endif

#undef CF_FOR_PIECES
#undef CF_MIN_GROUPS_PER_THREAD
#undef RUN_THREADS
#undef APPLY_INLINE
#undef TEAM_BARRIER
#undef MULADD
#undef LANES
#undef D_LANES
#undef CL_PREFETCH_COLUMNS
#undef CL_PREFETCH_BYTES
#undef GRAD
#undef GRAD_V
#undef HALF_VECTORS
#undef TRAIN_VALUE
#undef INFER_VALUE
#undef BACKWARD_VALUE
#undef FROZEN_DX_VALUE
#undef TV
#undef WIDEN_V
#undef NARROW_V
#undef WIDE_BUF
#undef WIDE_STEP
#undef WIDE_VIEW
#undef LANES_BUF
#undef LANES_VIEW
#undef FN
#undef CAT
#undef CAT_
#undef TS
#undef WIDEN
#undef NARROW
