/* cbn_f32.c - float32 instantiation of the kernels in kernels_impl.h. */
#define T float
#define STATS_MAX_CANCEL 0x1p16
#define SFX f32
#include "kernels_impl.h"
