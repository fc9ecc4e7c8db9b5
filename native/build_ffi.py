"""cffi build script (out-of-line API mode) for ``mhc_array._native``.

Used by setup.py as ``cffi_modules=["native/build_ffi.py:ffibuilder"]`` (run
from the repository root), or directly: ``python native/build_ffi.py [tmpdir]``
compiles the module into ``tmpdir`` (default /tmp/mhcbuild) for testing.

Environment: MHC_ARRAY_VERSION (version compiled in, default 0.1.0);
MHC_ARRAY_SANITIZE=1 builds with AddressSanitizer and UBSan.
"""

import os
import sys

import cffi

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def _rel(*parts):
    """Path relative to the repository root when setup.py runs from there (setuptools
    wants relative sources), else absolute (ffibuilder.compile changes directory)."""
    path = os.path.join(_HERE, *parts)
    if __name__ != "__main__" and os.path.abspath(os.getcwd()) == _ROOT:
        return os.path.relpath(path, _ROOT)
    return path


SOURCES = [_rel("src", f) for f in (
    "cpu_features.c", "dispatch.c", "kernels_portable.c", "kernels_sse.c",
    "kernels_avx2.c", "kernels_avx512.c", "probe.c")]

CDEF = """
typedef int mhc_status;
#define MHC_OK 0
#define MHC_ERR_OUT_OF_MEMORY 1
#define MHC_ERR_INVALID_DIMENSION 2
#define MHC_ERR_NULL_POINTER 3
#define MHC_ERR_COMPUTATION 4
#define MHC_ERR_DOMAIN 5
#define MHC_ERR_MISALIGNED 6
#define MHC_ISA_PORTABLE 0
#define MHC_ISA_SSE 1
#define MHC_ISA_AVX2 2
#define MHC_ISA_AVX512 3
#define MHC_CPU_SSE2 1
#define MHC_CPU_SSE41 2
#define MHC_CPU_AVX 4
#define MHC_CPU_AVX2 8
#define MHC_CPU_FMA 16
#define MHC_CPU_AVX512F 32
#define MHC_CPU_AVX512DQ 64
#define MHC_CPU_AVX512BW 128
#define MHC_CPU_AVX512VL 256
#define MHC_CPU_OS_AVX 512
#define MHC_CPU_OS_AVX512 1024
#define MHC_SK_LOGITS 1
#define MHC_SK_COLS_FIRST 2
#define MHC_EUCLIDEAN 0
#define MHC_POINCARE 1
#define MHC_SPHERICAL 2
#define MHC_DOM_RAISE 0
#define MHC_DOM_NAN 1
#define MHC_DOM_CLIP 2

uint32_t mhc_cpu_feature_bits(void);
int mhc_best_isa(void);
int mhc_resolve_isa(int requested);
const char *mhc_build_info(void);
const char *mhc_version(void);

int mhc_sinkhorn_f32(const float *x, int64_t x_bstride, int64_t x_rstride,
                     float *out, int64_t out_bstride, int64_t out_rstride,
                     int64_t batch, int64_t n, int64_t m,
                     const float *row_sums, int64_t rs_bstride,
                     const float *col_sums, int64_t cs_bstride,
                     int64_t iterations, double tau, int flags,
                     int isa, int n_threads, int64_t *err_index);
int mhc_sinkhorn_f64(const double *x, int64_t x_bstride, int64_t x_rstride,
                     double *out, int64_t out_bstride, int64_t out_rstride,
                     int64_t batch, int64_t n, int64_t m,
                     const double *row_sums, int64_t rs_bstride,
                     const double *col_sums, int64_t cs_bstride,
                     int64_t iterations, double tau, int flags,
                     int isa, int n_threads, int64_t *err_index);
int mhc_distance_f32(int manifold, const float *x, int64_t x_rstride,
                     const float *c, int64_t c_rstride, float *out,
                     int64_t rows, int64_t d, double curvature,
                     int on_domain_error, int isa, int n_threads,
                     int64_t *err_index);
int mhc_distance_f64(int manifold, const double *x, int64_t x_rstride,
                     const double *c, int64_t c_rstride, double *out,
                     int64_t rows, int64_t d, double curvature,
                     int on_domain_error, int isa, int n_threads,
                     int64_t *err_index);
int mhc_pairwise_f32(int manifold, const float *x, int64_t nx, int64_t x_rstride,
                     const float *y, int64_t ny, int64_t y_rstride, int64_t d,
                     float *out, double curvature, int on_domain_error,
                     int isa, int n_threads, int64_t *err_index);
int mhc_pairwise_f64(int manifold, const double *x, int64_t nx, int64_t x_rstride,
                     const double *y, int64_t ny, int64_t y_rstride, int64_t d,
                     double *out, double curvature, int on_domain_error,
                     int isa, int n_threads, int64_t *err_index);

typedef struct mhc_hc_ws mhc_hc_ws;
mhc_hc_ws *mhc_hc_ws_create(void);
void mhc_hc_ws_destroy(mhc_hc_ws *ws);
int mhc_hc_pre_f32(const float *x, int64_t x_tstride, int64_t tokens, int64_t n, int64_t C,
                   const float *phi, int64_t Kp, const float *bias, const float *alpha,
                   int variant, int64_t iterations, double norm_eps, double hc_eps,
                   float *h_in, float *h_pre, float *h_post, float *h_res, mhc_hc_ws *ws,
                   int isa, int n_threads);
int mhc_hc_pre_f64(const double *x, int64_t x_tstride, int64_t tokens, int64_t n, int64_t C,
                   const double *phi, int64_t Kp, const double *bias, const double *alpha,
                   int variant, int64_t iterations, double norm_eps, double hc_eps,
                   double *h_in, double *h_pre, double *h_post, double *h_res, mhc_hc_ws *ws,
                   int isa, int n_threads);
int mhc_hc_post_f32(const float *x, int64_t x_tstride, const float *f, int64_t f_tstride,
                    const float *h_post, const float *h_res, float *out, int64_t out_tstride,
                    int64_t tokens, int64_t n, int64_t C, int isa, int n_threads);
int mhc_hc_post_f64(const double *x, int64_t x_tstride, const double *f, int64_t f_tstride,
                    const double *h_post, const double *h_res, double *out, int64_t out_tstride,
                    int64_t tokens, int64_t n, int64_t C, int isa, int n_threads);
double mhc_probe_read_f32(const float *x, int64_t n);
double mhc_probe_fma(int64_t iters);
int mhc_probe_fma_lanes(void);
void mhc_debug_fail_allocs_after(int64_t count);
int64_t mhc_debug_live_allocs(void);
"""

VERSION = os.environ.get("MHC_ARRAY_VERSION", "0.1.0")
COMPILE_ARGS = ["-O3", "-std=c11", "-fno-strict-aliasing", "-ffp-contract=fast", "-pthread"]
LINK_ARGS = ["-pthread"]
if os.environ.get("MHC_ARRAY_SANITIZE", "") not in ("", "0"):
    _san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    COMPILE_ARGS += _san
    LINK_ARGS += _san

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "mhc_array._native",
    '#include "mhc_native.h"',
    sources=SOURCES,
    include_dirs=[_rel("include")],
    depends=[_rel("include", "mhc_native.h")] + [_rel("src", f) for f in (
        "mhc_internal.h", "kernels.inc", "kernels_t.inc", "dispatch_t.inc")],
    extra_compile_args=COMPILE_ARGS,
    extra_link_args=LINK_ARGS,
    define_macros=[("MHC_ARRAY_VERSION", '"%s"' % VERSION), ("_GNU_SOURCE", None)],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else "/tmp/mhcbuild",
                       verbose=True)
