"""Every CUDA source compiles, without a GPU: with nvcc to PTX for sm_80 and
sm_90 (when nvcc is installed) -- and to sm_90 machine code within the resource
rules (``ptxas -v``: no spills; float32 kernels without a stack frame and within
128 registers) -- and with NVRTC itself -- the compiler CuPy's
RawModule uses -- from its pip package (nvidia-cuda-nvrtc-cu12, the ``test``
extra), given exactly the text and options the cupy backend gives RawModule
(``backends/cupy.py``: ``source(name)``, ``NVRTC_OPTIONS``). NVRTC refuses
things nvcc accepts (standard headers, INFINITY without one)."""

import ctypes
import glob
import os
import shutil
import subprocess

import pytest
from conftest import KERNEL_RE

from mhc_array.backends import cupy as cb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = os.path.join(ROOT, "native", "cuda")
ARCHS = ["80", "90"]


def _nvcc():
    found = shutil.which("nvcc")
    if found is None and os.path.isfile("/usr/local/cuda/bin/nvcc"):
        found = "/usr/local/cuda/bin/nvcc"
    return found


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", cb.SOURCES)
def test_nvcc_ptx(name, arch, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    out = tmp_path / (name + ".ptx")
    p = subprocess.run([nvcc, "-ptx", f"-arch=sm_{arch}", "-std=c++17", "-Werror",
                        "all-warnings", "-I", CUDA, os.path.join(CUDA, name), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    for kernel in _kernels(name):
        assert f".entry {kernel}(" in text, kernel


#: the resource rules of float32 kernels on sm_90 (ptxas -v): registers at most
#: this (two blocks of 256 threads per SM), no stack frame (no local memory)
F32_MAX_REGISTERS = 128


def ptxas_resources(nvcc, name, tmp_path):
    """{kernel: (registers, stack bytes, spill stores, spill loads)} of one source
    compiled for sm_90."""
    import re
    p = subprocess.run([nvcc, "-cubin", "-arch=sm_90", "-std=c++17", "-Xptxas", "-v", "-I",
                        CUDA, os.path.join(CUDA, name), "-o", str(tmp_path / "k.cubin")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    found, kernel, frame = {}, None, None
    for line in p.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            kernel = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                      r"loads", line)
        if m:
            frame = tuple(int(v) for v in m.groups())
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and kernel:
            found[kernel] = (int(m.group(1)), *frame)
            kernel = None
    return found


@pytest.mark.parametrize("name", cb.SOURCES)
def test_ptxas_resources(name, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    found = ptxas_resources(nvcc, name, tmp_path)
    assert set(found) == set(_kernels(name))
    bad = {k: v for k, v in found.items()
           if v[2] or v[3] or (k.endswith("_f32") and (v[1] or v[0] > F32_MAX_REGISTERS))}
    assert not bad, "(registers, stack, spill stores, spill loads): " + repr(bad)


def test_ptxas_resources_has_teeth(tmp_path):
    """The rule sees a stack frame: an accumulator array indexed at run time."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    src = tmp_path / "bad.cu"
    src.write_text('extern "C" __global__ void bad_f32(float *p, int k) { float a[64]; '
                   'for (int i = 0; i < 64; i++) a[i] = p[i] * p[i + 64]; '
                   'for (int i = 0; i < 64; i++) a[(i * k) & 63] += p[i]; p[0] = a[k & 63]; }')
    found = ptxas_resources(nvcc, str(src), tmp_path)
    assert found["bad_f32"][1] > 0


def _kernels(name):
    import re
    with open(os.path.join(CUDA, name)) as f:
        bases = re.findall(KERNEL_RE, f.read())
    return [b + s for b in bases for s in ("_f32", "_f64")]


def _libnvrtc():
    """libnvrtc of the pip package nvidia-cuda-nvrtc-cu12, or None."""
    try:
        import nvidia.cuda_nvrtc as pkg
    except ImportError:
        return None
    for d in pkg.__path__:
        for path in sorted(glob.glob(os.path.join(d, "lib", "libnvrtc.so*"))):
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    return None


def nvrtc_compile(lib, text, name, options):
    """(ok, log, ptx) of NVRTC compiling ``text`` with ``options``."""
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), text.encode(), name.encode(), 0, None,
                                  None) == 0
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx = b""
    if status == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, buf)
        ptx = buf.value
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return status == 0, log.value.decode(errors="replace"), ptx.decode(errors="replace")


@pytest.fixture(scope="module")
def nvrtc():
    lib = _libnvrtc()
    if lib is None:
        pytest.skip("NVRTC's pip package (nvidia-cuda-nvrtc-cu12, in the test extra) is not "
                    "installed")
    return lib


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", cb.SOURCES)
def test_nvrtc(nvrtc, name, arch):
    ok, log, ptx = nvrtc_compile(nvrtc, cb.source(name), name,
                                 list(cb.NVRTC_OPTIONS) + [f"--gpu-architecture=compute_{arch}"])
    assert ok, log
    for kernel in _kernels(name):
        assert f".entry {kernel}(" in ptx, kernel


def test_nvrtc_has_teeth(nvrtc):
    """The check fails where it should: INFINITY without a header does not compile."""
    ok, log, _ = nvrtc_compile(nvrtc, "extern \"C\" __global__ void k(float *p) "
                               "{ p[0] = INFINITY; }", "bad.cu", list(cb.NVRTC_OPTIONS))
    assert not ok and "INFINITY" in log


def test_sources_are_listed_and_self_contained():
    """The backend compiles every .cu there is, and each needs only the shared header."""
    assert sorted(cb.SOURCES) == sorted(os.path.basename(p)
                                        for p in glob.glob(os.path.join(CUDA, "*.cu")))
    for name in cb.SOURCES:
        text = cb.source(name)
        assert "#include" not in text, name
