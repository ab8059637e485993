/* runtime.c - library-wide queries: OpenMP availability, default thread count, error text. */
#include "cbn.h"
#include "omp_compat.h"
#include "thread_limit.h"

int cbn_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int cbn_max_threads(void) { return cbn_thread_limit(omp_get_max_threads()); }

const char *cbn_error_string(int code)
{
    switch (code) {
    case CBN_OK: return "ok";
    case CBN_ERR_ARGUMENT: return "invalid argument";
    case CBN_ERR_TOO_FEW_VALUES: return "expected more than 1 value per channel when training";
    case CBN_ERR_NO_MEMORY: return "out of memory";
    default: return "unknown error";
    }
}
