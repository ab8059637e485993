/* half_convert.h - float16 and bfloat16 <-> float32 conversions: of one value, as integer and
 * float32 operations that GCC vectorizes at every x86-64 level (and any other target); and of
 * a block of float16 values, with F16C instructions where the CPU has them.
 *
 * Why not _Float16: GCC 12 converts it one value at a time (it has no vector mode for it
 * without AVX512-FP16, and at x86-64-v2 each conversion is a libgcc call). The one-value
 * functions vectorize inside the kernels' loops, which suits bfloat16 (a shift, and a rounding
 * of a few integer operations); float16's take about 5 instructions per value, so the kernels
 * convert float16 a block at a time instead (kernels_common.h, WIDE_VIEW).
 *
 * Widening is exact. Narrowing rounds once, to nearest even; overflow gives infinity, and NaN
 * gives a quiet NaN of the same sign. They need IEEE single arithmetic in round-to-nearest
 * without flush-to-zero (C99 on x86-64, aarch64; not -ffast-math, which would reassociate
 * them). */
#ifndef CBN_HALF_CONVERT_H
#define CBN_HALF_CONVERT_H

#include <stdint.h>
#include <string.h>

static inline float cbn_bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t cbn_float_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* float16 -> float32 (M. Maratos's FP16 method). Normal values: the exponent and mantissa
 * shifted into place, exponent bias corrected by a multiplication by 2^-112 (which also keeps
 * 31, infinity/NaN, at 255). Subnormals: the mantissa as the low bits of 0.5's mantissa, minus
 * 0.5, which is exact. */
static inline float cbn_f16_to_float(uint16_t h)
{
    const uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
    const float normal = cbn_bits_to_float((two_w >> 4) + (0xE0u << 23)) * 0x1p-112f;
    const float subnormal = cbn_bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t bits = two_w < (1u << 27) ? cbn_float_to_bits(subnormal)
                                             : cbn_float_to_bits(normal);
    return cbn_bits_to_float(sign | bits);
}

/* float32 -> float16, round to nearest even. |f| is scaled so that values too large for
 * float16 overflow to infinity in float32 arithmetic, then an addition of a power of two
 * (set by f's exponent, at least 2^-14's) rounds the mantissa to float16's 10 bits at the right
 * place, in float32's own round-to-nearest-even; the result's bits are then float16's. */
static inline uint16_t cbn_float_to_f16(float f)
{
    const uint32_t w = cbn_float_to_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
    float base = cbn_bits_to_float(cbn_float_to_bits(f) & 0x7FFFFFFFu) * 0x1p+112f * 0x1p-110f;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = cbn_bits_to_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = cbn_float_to_bits(base);
    const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    /* NaN: quiet, its payload's top bits kept, as F16C's vcvtps2ph does */
    const uint32_t nan = 0x7E00u | ((w >> 13) & 0x03FFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? nan : nonsign));
}

/* bfloat16 -> float32: the upper half of the float's bits */
static inline float cbn_bf16_to_float(uint16_t b) { return cbn_bits_to_float((uint32_t)b << 16); }

/* float32 -> bfloat16, round to nearest even on the upper 16 bits (a carry into the exponent
 * is right, up to infinity); NaN stays NaN, made quiet so that dropping the low bits cannot
 * turn it into infinity. */
static inline uint16_t cbn_float_to_bf16(float f)
{
    const uint32_t u = cbn_float_to_bits(f);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? (u >> 16) | 0x0040u : rounded);
}

/* ---- float16 blocks. Where the CPU has F16C (x86-64-v3 and v4), 8 values per instruction (16
 * with AVX-512, whose masks also convert the last few without a scalar tail). vcvtps2ph with
 * an explicit round-to-nearest-even gives the same bits as cbn_float_to_f16 for every float,
 * NaN included (checked over all 2^32 patterns). */
#if defined(__F16C__)
#include <immintrin.h>
#endif

static inline void cbn_f16_widen_block(const uint16_t *restrict src, float *restrict dst,
                                       int64_t n)
{
    int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i,
                         _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    if (i < n) {                     /* the last n - i < 16: masked, no scalar tail */
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(dst + i, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, src + i)));
    }
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    if (i < n) {                     /* the last n - i < 8 through a zero-padded vector */
        uint16_t h[8] = {0};
        float f[8];
        for (int64_t k = 0; k < n - i; k++) h[k] = src[i + k];
        _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
        for (int64_t k = 0; k < n - i; k++) dst[i + k] = f[k];
    }
#else
    for (; i < n; i++) dst[i] = cbn_f16_to_float(src[i]);
#endif
}

static inline void cbn_f16_narrow_block(const float *restrict src, uint16_t *restrict dst,
                                        int64_t n)
{
    int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        _mm256_mask_storeu_epi16(dst + i, k, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, src + i),
                                                             _MM_FROUND_TO_NEAREST_INT));
    }
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        float f[8] = {0};
        uint16_t h[8];
        for (int64_t k = 0; k < n - i; k++) f[k] = src[i + k];
        _mm_storeu_si128((__m128i *)h,
                         _mm256_cvtps_ph(_mm256_loadu_ps(f), _MM_FROUND_TO_NEAREST_INT));
        for (int64_t k = 0; k < n - i; k++) dst[i + k] = h[k];
    }
#else
    for (; i < n; i++) dst[i] = cbn_float_to_f16(src[i]);
#endif
}

#endif
