/* stream_store.h - copy a block that was just computed in L1 to its destination with
 * non-temporal (streaming) stores, where the CPU has them.
 *
 * Ordinary stores first read each destination cache line from memory (read-for-ownership), so
 * writing an output that does not fit in cache costs a read and a write. Streaming stores skip
 * that read and leave the cache to the input. Callers call cbn_stream_fence() before other
 * threads may read what was streamed. Without SSE2 this is a plain memcpy. */
#ifndef CBN_STREAM_STORE_H
#define CBN_STREAM_STORE_H

#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

static inline void cbn_stream_bytes(void *dst, const void *src, size_t n)
{
#if defined(__AVX512F__)
#define CBN_STREAM_WIDTH 64
#elif defined(__AVX__)
#define CBN_STREAM_WIDTH 32
#elif defined(__SSE2__)
#define CBN_STREAM_WIDTH 16
#endif
#ifdef CBN_STREAM_WIDTH
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = (CBN_STREAM_WIDTH - ((uintptr_t)d & (CBN_STREAM_WIDTH - 1))) &
                  (CBN_STREAM_WIDTH - 1);
    if (head > n) head = n;
    memcpy(d, s, head);
    d += head, s += head, n -= head;
    for (; n >= CBN_STREAM_WIDTH; d += CBN_STREAM_WIDTH, s += CBN_STREAM_WIDTH,
                                  n -= CBN_STREAM_WIDTH) {
#if defined(__AVX512F__)
        _mm512_stream_si512((void *)d, _mm512_loadu_si512((const void *)s));
#elif defined(__AVX__)
        _mm256_stream_si256((__m256i *)d, _mm256_loadu_si256((const __m256i *)s));
#else
        _mm_stream_si128((__m128i *)d, _mm_loadu_si128((const __m128i *)s));
#endif
    }
    memcpy(d, s, n);
#undef CBN_STREAM_WIDTH
#else
    memcpy(dst, src, n);
#endif
}

/* Orders this thread's streaming stores before what follows (a barrier, a return). */
static inline void cbn_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

#endif
