/* cbn_bf16.c - bfloat16 storage (the upper 16 bits of a float32) of the kernels in
 * kernels_impl.h: tensors of 16 bits, computed in float32 (T) with float32 parameters and
 * statistics. */
#include "half_convert.h"
#define T float
#define STATS_MAX_CANCEL 4.0      /* float blocks: see channel_pivot */
#define FLOAT_SUM_BLOCK 8      /* sums in float blocks of 8 values per lane, carried in double */
#define SFX bf16
#define NARROW_STORAGE
#define TS cbn_bfloat16
#define WIDEN(v) cbn_bf16_to_float(v)
#define NARROW(v) cbn_float_to_bf16(v)
#include "kernels_impl.h"
