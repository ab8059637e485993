/* omp_compat.h - the few OpenMP calls cbn uses, with serial stand-ins when built without it. */
#ifndef CBN_OMP_COMPAT_H
#define CBN_OMP_COMPAT_H
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_max_threads(void) { return 1; }
#endif
#endif
