/* stream_store.h - copy a block that was just computed in L1 to its destination with
 * non-temporal (streaming) stores, where the CPU has them.
 *
 * Ordinary stores first read each destination cache line from memory (read-for-ownership), so
 * writing an output that does not fit in cache costs a read and a write. Streaming stores skip
 * that read and leave the cache to the input. Callers call cbn_stream_fence() before other
 * threads may read what was streamed. Without SSE2 this is a plain memcpy.
 *
 * Only whole, aligned 64-byte lines are streamed. A line written partly by streaming stores and
 * partly by ordinary ones (or streamed only in part) is flushed to memory piecemeal: outputs
 * 16 or 48 bytes off a line boundary ran up to 50x slower that way. The partial lines at either
 * end of a block get ordinary stores, so callers that stream consecutive blocks should end
 * their blocks on line boundaries (cbn_stream_block_len) to keep those few. */
#ifndef CBN_STREAM_STORE_H
#define CBN_STREAM_STORE_H

#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#define CBN_LINE_BYTES 64

/* Bytes from p to the next cache-line boundary (0 on one). */
static inline size_t cbn_bytes_to_line(const void *p)
{
    return (size_t)(-(uintptr_t)p & (CBN_LINE_BYTES - 1));
}

static inline void cbn_stream_bytes(void *dst, const void *src, size_t n)
{
#if defined(__SSE2__)
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = cbn_bytes_to_line(d);
    if (head > n) head = n;
    memcpy(d, s, head);
    d += head, s += head, n -= head;
    for (; n >= CBN_LINE_BYTES; d += CBN_LINE_BYTES, s += CBN_LINE_BYTES, n -= CBN_LINE_BYTES) {
#if defined(__AVX512F__)
        _mm512_stream_si512((void *)d, _mm512_loadu_si512((const void *)s));
#elif defined(__AVX__)
        _mm256_stream_si256((__m256i *)d, _mm256_loadu_si256((const __m256i *)s));
        _mm256_stream_si256((__m256i *)(d + 32), _mm256_loadu_si256((const __m256i *)(s + 32)));
#else
        for (int k = 0; k < CBN_LINE_BYTES; k += 16)
            _mm_stream_si128((__m128i *)(d + k), _mm_loadu_si128((const __m128i *)(s + k)));
#endif
    }
    memcpy(d, s, n);
#else
    memcpy(dst, src, n);
#endif
}

/* Elements (of elem_bytes each, at most `block`, at most `left`) of the next block to stream to
 * dst, chosen so that the block ends on a line boundary of the destination when it does not
 * end the range: consecutive blocks then never share a line. */
static inline int64_t cbn_stream_block_len(const void *dst, int64_t left, int64_t block,
                                           size_t elem_bytes)
{
    if (left <= block) return left;
    const uintptr_t end = (uintptr_t)dst + (uintptr_t)block * elem_bytes;
    const int64_t trim = (int64_t)((end & (CBN_LINE_BYTES - 1)) / elem_bytes);
    return trim < block ? block - trim : block;
}

/* Orders this thread's streaming stores before what follows (a barrier, a return). */
static inline void cbn_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

#endif
