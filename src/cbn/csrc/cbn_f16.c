/* cbn_f16.c - float16 storage (IEEE binary16, NumPy's float16) of the kernels in kernels_impl.h:
 * tensors of 16 bits, computed in float32 (T) with float32 parameters and statistics. */
#include "half_convert.h"
#include "half_vectors.h"    /* the elementwise pass in registers (v3, v4) */
#define T float
#define STATS_MAX_CANCEL 4.0      /* float blocks: see channel_pivot */
#define FLOAT_SUM_BLOCK 8      /* sums in float blocks of 8 values per lane, carried in double */
#define SFX f16
#define NARROW_STORAGE
#define TS cbn_float16
#define WIDEN(v) cbn_f16_to_float(v)
#define NARROW(v) cbn_float_to_f16(v)
#define WIDEN_BLOCK(src, dst, n) cbn_f16_widen_block((src), (dst), (n))
#define NARROW_BLOCK(src, dst, n) cbn_f16_narrow_block((src), (dst), (n))
#define HALF_VEC_LOAD_N cbn_f16_vec_load_n
#define HALF_VEC_STORE_N cbn_f16_vec_store_n
#include "kernels_impl.h"
