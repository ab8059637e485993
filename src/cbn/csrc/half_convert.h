/* half_convert.h - float16 and bfloat16 <-> float32 conversions of one value, as integer and
 * float32 operations that GCC vectorizes at every x86-64 level (and any other target).
 *
 * Why not _Float16 or F16C intrinsics: GCC 12 converts _Float16 one value at a time (it has no
 * vector mode for it without AVX512-FP16, and at x86-64-v2 each conversion is a libgcc call),
 * and intrinsics would need the loops rewritten by hand for each level. These few operations
 * per value vectorize with the loops as they are written.
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
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
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

#endif
