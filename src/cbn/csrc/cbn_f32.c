/* cbn_f32.c - float32 instantiation of the kernels in kernels_impl.h. */
#define T float
#define STATS_MAX_CANCEL 4.0      /* float blocks: see channel_pivot */
#define FLOAT_SUM_BLOCK 8      /* sums in float blocks of 8 values per lane, carried in double */
#define SFX f32
#include "kernels_impl.h"
