/* scratch.h - the per-call work memory of the kernels, reused from call to call. */
#ifndef CBN_SCRATCH_H
#define CBN_SCRATCH_H

#include <stddef.h>

/* At least `bytes` of work memory, 64-byte aligned, or NULL when out of memory. Give it back
 * with cbn_scratch_release. */
void *cbn_scratch_acquire(size_t bytes);
void cbn_scratch_release(void *block);

#endif
