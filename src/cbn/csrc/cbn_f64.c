/* cbn_f64.c - float64 instantiation of the kernels in kernels_impl.h. */
#define T double
#define STATS_MAX_CANCEL 16.0
#define SFX f64
#include "kernels_impl.h"
