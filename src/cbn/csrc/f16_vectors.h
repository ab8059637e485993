/* f16_vectors.h - float16 values as float32 vectors, converted in registers with F16C (16 per
 * vector with AVX-512, 8 with AVX), for the elementwise pass of float16 storage.
 *
 * Why: float16 blocks (kernels_common.h, WIDE_VIEW) are widened into a float buffer and
 * narrowed back from one, which costs each value a float32 store and load on the way in and out;
 * in cache, where stores set the pace, float16 inference then took 1.8x float32's time. Here
 * each vector of float16 values is loaded and converted, computed on, converted and stored.
 *
 * The arithmetic is GCC's vector extensions on these types (+, -, * per lane, with a scalar
 * operand broadcast), which rounds per lane as the scalar code does (-ffp-contract=off: no
 * fused multiply-adds), so the bits are float32's. The two selects of the pass are
 * intrinsics with the scalar code's NaN behaviour. CBN_F16_VECTORS is defined where F16C is;
 * CBN_F16_VEC_MASKED where AVX-512 masks can also do a last, partial vector. */
#ifndef CBN_F16_VECTORS_H
#define CBN_F16_VECTORS_H

#include <stdint.h>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define CBN_F16_VECTORS

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define CBN_F16_VEC 16
typedef __m512 cbn_f16_vec;

static inline cbn_f16_vec cbn_f16_vec_load(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* rounded to nearest even, as cbn_float_to_f16 */
static inline void cbn_f16_vec_store(uint16_t *p, cbn_f16_vec v)
{
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

static inline cbn_f16_vec cbn_f16_vec_floats(const float *p) { return _mm512_loadu_ps(p); }
static inline cbn_f16_vec cbn_f16_vec_set1(float v) { return _mm512_set1_ps(v); }

/* The first k <= 16 values (a whole vector, or with masks the first k, the others read as 0
 * and never written): a run's last values need no scalar or buffered tail. */
#define CBN_F16_VEC_MASKED
static inline __mmask16 cbn_f16_vec_mask(int64_t k) { return (__mmask16)((1u << k) - 1u); }

static inline cbn_f16_vec cbn_f16_vec_load_n(const uint16_t *p, int64_t k)
{
    return k == 16 ? cbn_f16_vec_load(p)
                   : _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(cbn_f16_vec_mask(k), p));
}

static inline void cbn_f16_vec_store_n(uint16_t *p, cbn_f16_vec v, int64_t k)
{
    if (k == 16)
        cbn_f16_vec_store(p, v);
    else
        _mm256_mask_storeu_epi16(p, cbn_f16_vec_mask(k),
                                 _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

static inline cbn_f16_vec cbn_f16_vec_floats_n(const float *p, int64_t k)
{
    return k == 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(cbn_f16_vec_mask(k), p);
}

/* v < lo ? lo : v per lane (NaN stays NaN): maxps returns its second operand unless the first
 * is greater */
static inline cbn_f16_vec cbn_f16_vec_clamp(cbn_f16_vec v, cbn_f16_vec lo)
{
    return _mm512_max_ps(lo, v);
}

/* y > 0 ? dy : +0 per lane */
static inline cbn_f16_vec cbn_f16_vec_relu_grad(cbn_f16_vec dy, cbn_f16_vec y)
{
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), dy);
}
#else
#define CBN_F16_VEC 8
typedef __m256 cbn_f16_vec;

static inline cbn_f16_vec cbn_f16_vec_load(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline void cbn_f16_vec_store(uint16_t *p, cbn_f16_vec v)
{
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

static inline cbn_f16_vec cbn_f16_vec_floats(const float *p) { return _mm256_loadu_ps(p); }
static inline cbn_f16_vec cbn_f16_vec_set1(float v) { return _mm256_set1_ps(v); }

/* without masks, only whole vectors: k == 8 */
static inline cbn_f16_vec cbn_f16_vec_load_n(const uint16_t *p, int64_t k)
{
    (void)k;
    return cbn_f16_vec_load(p);
}

static inline void cbn_f16_vec_store_n(uint16_t *p, cbn_f16_vec v, int64_t k)
{
    (void)k;
    cbn_f16_vec_store(p, v);
}

static inline cbn_f16_vec cbn_f16_vec_floats_n(const float *p, int64_t k)
{
    (void)k;
    return cbn_f16_vec_floats(p);
}

static inline cbn_f16_vec cbn_f16_vec_clamp(cbn_f16_vec v, cbn_f16_vec lo)
{
    return _mm256_max_ps(lo, v);
}

static inline cbn_f16_vec cbn_f16_vec_relu_grad(cbn_f16_vec dy, cbn_f16_vec y)
{
    return _mm256_and_ps(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ), dy);
}
#endif
#endif

#endif
