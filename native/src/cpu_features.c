/*
 * cpu_features.c -- CPU and OS feature detection (CPUID + XGETBV), done once.
 *
 * AVX-class instructions are only usable when the OS saves the wider register
 * state (XCR0), which CPUID alone does not say: VMs may mask it.
 */
#include <pthread.h>
#include "mhc_internal.h"

#ifndef MHC_ARRAY_VERSION
#define MHC_ARRAY_VERSION "0+unknown"
#endif

#if MHC_X86
#include <cpuid.h>

static uint64_t read_xcr0(void)
{
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

static uint32_t detect(void)
{
    unsigned a, b, c, d;
    uint32_t f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (d & (1u << 26)) f |= MHC_CPU_SSE2;
    if (c & (1u << 19)) f |= MHC_CPU_SSE41;
    if (c & (1u << 28)) f |= MHC_CPU_AVX;
    if (c & (1u << 12)) f |= MHC_CPU_FMA;
    if (c & (1u << 27)) {                       /* OSXSAVE: XGETBV usable */
        uint64_t xcr0 = read_xcr0();
        if ((xcr0 & 0x6) == 0x6) f |= MHC_CPU_OS_AVX;            /* XMM, YMM */
        if ((xcr0 & 0xE6) == 0xE6) f |= MHC_CPU_OS_AVX512;       /* + opmask, ZMM */
    }
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if (b & (1u << 5))  f |= MHC_CPU_AVX2;
        if (b & (1u << 16)) f |= MHC_CPU_AVX512F;
        if (b & (1u << 17)) f |= MHC_CPU_AVX512DQ;
        if (b & (1u << 30)) f |= MHC_CPU_AVX512BW;
        if (b & (1u << 31)) f |= MHC_CPU_AVX512VL;
        if (a >= 1) {                           /* leaf 7 has sub-leaf 1 */
            __cpuid_count(7, 1, a, b, c, d);
            if (a & (1u << 5)) f |= MHC_CPU_AVX512BF16;
        }
    }
    return f;
}
#else
static uint32_t detect(void) { return 0; }
#endif

#if MHC_X86
/* AMD family 19h with AVX-512 (Zen 4): its 512-bit operations run on 256-bit units */
static int detect_half_width(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return 0;
    const int amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  /* AuthenticAMD */
    if (!amd || !__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    unsigned family = (a >> 8) & 0xF;
    if (family == 0xF)
        family += (a >> 20) & 0xFF;
    return family == 0x19;
}
#else
static int detect_half_width(void) { return 0; }
#endif

static uint32_t g_features;
static int g_best, g_half_width;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_features(void)
{
    const uint32_t avx2 = MHC_CPU_AVX | MHC_CPU_AVX2 | MHC_CPU_FMA | MHC_CPU_OS_AVX;
    const uint32_t avx512 = avx2 | MHC_CPU_AVX512F | MHC_CPU_AVX512DQ | MHC_CPU_AVX512BW |
                            MHC_CPU_AVX512VL | MHC_CPU_OS_AVX512;
    uint32_t f = detect();
    g_features = f;
    g_half_width = detect_half_width();
    if ((f & avx512) == avx512)
        g_best = MHC_ISA_AVX512;
    else if ((f & avx2) == avx2)
        g_best = MHC_ISA_AVX2;
    else if (f & MHC_CPU_SSE41)
        g_best = MHC_ISA_SSE;
    else
        g_best = MHC_ISA_PORTABLE;
}

uint32_t mhc_cpu_feature_bits(void)
{
    pthread_once(&g_once, init_features);
    return g_features;
}

int mhc_best_isa(void)
{
    pthread_once(&g_once, init_features);
    return g_best;
}

int mhc_avx512_half_width(void)
{
    pthread_once(&g_once, init_features);
    return g_best == MHC_ISA_AVX512 && g_half_width;
}

int mhc_resolve_isa(int requested)
{
    int best = mhc_best_isa();
    return (requested < 0 || requested > best) ? best : requested;
}

#if defined(__clang__)
#define MHC_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define MHC_COMPILER "gcc " __VERSION__
#else
#define MHC_COMPILER "unknown compiler"
#endif
#if MHC_X86
#define MHC_ISAS "avx512 avx2 sse portable"
#else
#define MHC_ISAS "portable"
#endif
#if defined(__SANITIZE_ADDRESS__)
#define MHC_SAN "; sanitizers: address"
#else
#define MHC_SAN ""
#endif

const char *mhc_build_info(void)
{
    return "compiler: " MHC_COMPILER "; isa levels: " MHC_ISAS MHC_SAN;
}

const char *mhc_version(void) { return MHC_ARRAY_VERSION; }
