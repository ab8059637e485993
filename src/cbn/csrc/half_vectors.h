/* half_vectors.h - 16-bit values as float32 vectors, converted in registers (16 per vector with
 * AVX-512, 8 with AVX2), for the elementwise pass of float16 storage.
 *
 * Why: float16 blocks (kernels_common.h, WIDE_VIEW) are widened into a float buffer and
 * narrowed back from one, which costs each value a float32 store and load on the way in and
 * out; in cache, where stores set the pace, float16 inference took 1.8x float32's time. Here
 * each vector of float16 values is loaded and converted with F16C, computed on, converted and
 * stored. bfloat16 keeps GCC's vectorized conversions inside the loops: the same pass with its
 * conversion in intrinsics (a shift in; the rounding of cbn_float_to_bf16 and vpmovdw out) took
 * 1.16x their time on channels-first inference (AMD Zen 4, v4), 0.9x on channels-last.
 *
 * The arithmetic is GCC's vector extensions on these types (+, -, * per lane), which rounds per
 * lane as the scalar code does (-ffp-contract=off: no fused multiply-adds), so the bits are
 * float32's. The two selects of the pass are intrinsics with the scalar code's NaN behaviour.
 * CBN_HALF_VECTORS is defined at x86-64-v3 and v4 (AVX2, F16C); CBN_HALF_VEC_MASKED where
 * AVX-512 masks can also do a last, partial vector. */
#ifndef CBN_HALF_VECTORS_H
#define CBN_HALF_VECTORS_H

#include <stdint.h>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define CBN_HALF_VECTORS

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define CBN_HALF_VEC 16
#define CBN_HALF_VEC_MASKED
typedef __m512 cbn_half_vec;

/* the first k <= 16 lanes */
static inline __mmask16 cbn_half_vec_mask(int64_t k) { return (__mmask16)((1u << k) - 1u); }

/* 16 values of 16 bits from p, or the first k (the others read as 0) */
static inline __m256i cbn_half_vec_bits_n(const uint16_t *p, int64_t k)
{
    return k == 16 ? _mm256_loadu_si256((const __m256i *)p)
                   : _mm256_maskz_loadu_epi16(cbn_half_vec_mask(k), p);
}

static inline cbn_half_vec cbn_half_vec_set1(float v) { return _mm512_set1_ps(v); }

static inline cbn_half_vec cbn_half_vec_floats_n(const float *p, int64_t k)
{
    return k == 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(cbn_half_vec_mask(k), p);
}

/* v < lo ? lo : v per lane (NaN stays NaN): maxps returns its second operand unless the first
 * is greater */
static inline cbn_half_vec cbn_half_vec_clamp(cbn_half_vec v, cbn_half_vec lo)
{
    return _mm512_max_ps(lo, v);
}

/* y > 0 ? dy : +0 per lane */
static inline cbn_half_vec cbn_half_vec_relu_grad(cbn_half_vec dy, cbn_half_vec y)
{
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), dy);
}

static inline cbn_half_vec cbn_f16_vec_load_n(const uint16_t *p, int64_t k)
{
    return _mm512_cvtph_ps(cbn_half_vec_bits_n(p, k));
}

/* rounded to nearest even, as cbn_float_to_f16 */
static inline void cbn_f16_vec_store_n(uint16_t *p, cbn_half_vec v, int64_t k)
{
    const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    if (k == 16)
        _mm256_storeu_si256((__m256i *)p, h);
    else
        _mm256_mask_storeu_epi16(p, cbn_half_vec_mask(k), h);
}
#else
#define CBN_HALF_VEC 8
typedef __m256 cbn_half_vec;

/* Without masks, whole vectors only: every _n function below is called with k == 8. */
static inline cbn_half_vec cbn_half_vec_set1(float v) { return _mm256_set1_ps(v); }

static inline cbn_half_vec cbn_half_vec_floats_n(const float *p, int64_t k)
{
    (void)k;
    return _mm256_loadu_ps(p);
}

static inline cbn_half_vec cbn_half_vec_clamp(cbn_half_vec v, cbn_half_vec lo)
{
    return _mm256_max_ps(lo, v);
}

static inline cbn_half_vec cbn_half_vec_relu_grad(cbn_half_vec dy, cbn_half_vec y)
{
    return _mm256_and_ps(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ), dy);
}

static inline cbn_half_vec cbn_f16_vec_load_n(const uint16_t *p, int64_t k)
{
    (void)k;
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline void cbn_f16_vec_store_n(uint16_t *p, cbn_half_vec v, int64_t k)
{
    (void)k;
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
#endif
#endif

#endif
