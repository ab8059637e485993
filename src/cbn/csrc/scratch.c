/* scratch.c - per-call work memory, kept for the next call.
 *
 * Kernels need work memory that grows with the number of channels (partial sums, per-channel
 * coefficients). A fresh malloc of a large block is a fresh mmap: every page faults on first
 * touch, and with a million channels that was most of a call's time (~20,000 faults). So the
 * last block released is kept, and a call that fits in it reuses its pages. One block is kept,
 * the larger when two are released at once; cbn_release_memory() frees it. Concurrent calls
 * each get a block of their own (the slot is taken with an atomic exchange). */
#include <stdint.h>
#include <stdlib.h>
#include "cbn.h"
#include "scratch.h"

typedef struct {
    void *raw;        /* what malloc returned */
    size_t bytes;     /* usable bytes after the header */
} block_header;

#define HEADER_BYTES 64  /* keeps the usable part 64-byte aligned */

#if defined(__GNUC__)
static block_header *kept;   /* the kept block, or NULL; accessed only atomically */
#define TAKE_KEPT() __atomic_exchange_n(&kept, (block_header *)NULL, __ATOMIC_ACQ_REL)
#define SWAP_KEPT(b) __atomic_exchange_n(&kept, (b), __ATOMIC_ACQ_REL)
#else                         /* no atomics: nothing is kept */
#define TAKE_KEPT() ((block_header *)NULL)
#define SWAP_KEPT(b) (b)
#endif

static void free_block(block_header *h)
{
    if (h) free(h->raw);
}

void *cbn_scratch_acquire(size_t bytes)
{
    block_header *h = TAKE_KEPT();
    if (h && h->bytes < bytes) {
        free_block(h);
        h = NULL;
    }
    if (!h) {
        void *raw = malloc(bytes + 2 * HEADER_BYTES);
        if (!raw) return NULL;
        char *usable = (char *)(((uintptr_t)raw + 2 * HEADER_BYTES - 1) & ~(uintptr_t)63);
        h = (block_header *)(usable - sizeof(block_header));
        h->raw = raw;
        h->bytes = bytes;
    }
    return (char *)h + sizeof(block_header);
}

void cbn_scratch_release(void *block)
{
    if (!block) return;
    block_header *h = (block_header *)((char *)block - sizeof(block_header));
    const size_t bytes = h->bytes;    /* read first: once h is kept, another call may free it */
    block_header *old = SWAP_KEPT(h);
    if (old) {                /* another call released one meanwhile: keep the larger */
        if (old->bytes > bytes) {
            block_header *mine = SWAP_KEPT(old);
            free_block(mine);
        } else {
            free_block(old);
        }
    }
}

void cbn_release_memory(void)
{
    free_block(TAKE_KEPT());
}
