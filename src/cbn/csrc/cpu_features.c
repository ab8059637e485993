/* cpu_features.c - which x86-64 micro-architecture levels this CPU and its OS support (see
 * dispatch.h), from cpuid and the OS's enabled register state (xgetbv).
 *
 * A CPU may report AVX or AVX-512 while the OS does not save their registers on a context
 * switch (XCR0); the instructions then fault. So, as libgcc's __builtin_cpu_supports does
 * (cpuinfo.h: AVX, AVX2, FMA, F16C only when XCR0 has the SSE and YMM states; AVX-512 only when
 * it also has the opmask, ZMM_Hi256 and Hi16_ZMM states), v3 needs OSXSAVE and XCR0 & 0x6 ==
 * 0x6, and v4 also XCR0 & 0xe0 == 0xe0. The feature lists are those of -march=x86-64-vN.
 * Compiled without -march flags, so it runs (and says no) on any x86-64 CPU. */
#include <string.h>
#include "dispatch.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

#define BIT(n) (1u << (n))

/* leaf 1, ECX */
#define V2_LEAF1_ECX (BIT(0) | BIT(9) | BIT(13) | BIT(19) | BIT(20) | BIT(23))
                     /* SSE3, SSSE3, CMPXCHG16B, SSE4.1, SSE4.2, POPCNT */
#define V3_LEAF1_ECX (BIT(12) | BIT(22) | BIT(27) | BIT(28) | BIT(29))
                     /* FMA, MOVBE, OSXSAVE, AVX, F16C */
/* leaf 7 subleaf 0, EBX */
#define V3_LEAF7_EBX (BIT(3) | BIT(5) | BIT(8))            /* BMI1, AVX2, BMI2 */
#define V4_LEAF7_EBX (BIT(16) | BIT(17) | BIT(28) | BIT(30) | BIT(31))
                     /* AVX512F, AVX512DQ, AVX512CD, AVX512BW, AVX512VL */
/* leaf 0x80000001, ECX */
#define V2_EXT_ECX BIT(0)                                  /* LAHF/SAHF in 64-bit mode */
#define V3_EXT_ECX BIT(5)                                  /* LZCNT (ABM) */
/* XCR0: the register state the OS saves */
#define XCR0_AVX 0x6u                                      /* SSE, YMM */
#define XCR0_AVX512 0xe0u                                  /* opmask, ZMM_Hi256, Hi16_ZMM */

static unsigned xcr0_low(void)
{
    unsigned lo, hi;
    __asm__ __volatile__(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0)); /* xgetbv */
    (void)hi;
    return lo;
}

/* The highest level this CPU and OS support: 4, 3, 2, or 0 (not even v2). */
static int highest_level(void)
{
    unsigned a, b, c, d, ecx1, ebx7 = 0, ext_ecx = 0;
    if (!__get_cpuid(1, &a, &b, &ecx1, &d)) return 0;
    if (__get_cpuid_max(0, NULL) >= 7) __cpuid_count(7, 0, a, ebx7, c, d);
    if (__get_cpuid_max(0x80000000u, NULL) >= 0x80000001u)
        __get_cpuid(0x80000001u, &a, &b, &ext_ecx, &d);
    if ((ecx1 & V2_LEAF1_ECX) != V2_LEAF1_ECX || !(ext_ecx & V2_EXT_ECX)) return 0;
    if ((ecx1 & V3_LEAF1_ECX) != V3_LEAF1_ECX || (ebx7 & V3_LEAF7_EBX) != V3_LEAF7_EBX ||
        !(ext_ecx & V3_EXT_ECX))
        return 2;
    const unsigned xcr0 = xcr0_low();          /* OSXSAVE is set: xgetbv exists */
    if ((xcr0 & XCR0_AVX) != XCR0_AVX) return 2;
    if ((ebx7 & V4_LEAF7_EBX) != V4_LEAF7_EBX || (xcr0 & XCR0_AVX512) != XCR0_AVX512) return 3;
    return 4;
}
#else
static int highest_level(void) { return 0; }
#endif

int cbn_cpu_supports_level(const char *level)
{
    if (!level || level[0] != 'v' || level[1] < '2' || level[1] > '4' || level[2] != '\0')
        return 0;
    return highest_level() >= level[1] - '0';
}
