"""The native (C) time loops of recurrence.c: built on first use, cached, optional.

The C source ships with the package and is compiled with the system C compiler (`$CC`, else `cc`) the
first time a float32 CPU loop runs, into a per-user cache (`$AVMDVAE_CACHE`, default
`~/.cache/avmdvae`), named by a hash of the source, the flags and the CPU's feature flags so that a
changed source or another machine never picks up a stale build. The library calls the BLAS sgemm
that PyTorch's own CPU library exports (MKL in the x86-64 wheels), so matrix products in the loops run
as fast as torch.mm's. Where PyTorch runs on GNU OpenMP, the library is built with OpenMP on that same
libgomp (see `_openmp_flags`) and splits the batch over up to torch.get_num_threads() threads.

Everything here is an accelerator: when there is no compiler, the build fails, PyTorch exports no
sgemm, or `AVMDVAE_NATIVE=0` is set, `library()` returns None and recurrence.py runs its PyTorch loops,
which compute the same thing (the tests check that both agree).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("recurrence.c")
# -fno-trapping-math lets GCC if-convert the clamp in exp_f32, without which the gate loops stay scalar;
# it changes no result (the code does not rely on floating-point exceptions).
CFLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fPIC", "-shared")

_P = ctypes.c_void_p
_I = ctypes.c_int
_SIGNATURES: dict[str, list[type]] = {
    "avm_set_sgemm": [_P],
    "avm_set_mkl_threads_local": [_P],
    "avm_set_sgemm_pack": [_P] * 3,
    "avm_bigru_forward": [_I] * 3 + [_P] * 7,
    "avm_bigru_backward": [_I] * 3 + [_P] * 7,
    "avm_chains_forward": [_I] * 7 + [_P] * 18,
    "avm_chains_backward": [_I] * 7 + [_P] * 18,
}

_lib: ctypes.CDLL | None = None
_tried = False


def enabled() -> bool:
    """False when the user switched the native loops off with AVMDVAE_NATIVE=0."""
    return os.environ.get("AVMDVAE_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    root = os.environ.get("AVMDVAE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "avmdvae"
    )
    return Path(root)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _torch_symbol(symbol: str) -> int | None:
    """Address of a function exported by PyTorch's CPU library (MKL's, in the x86-64 wheels), or None."""
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        if (lib_dir / name).exists():
            try:
                fn = getattr(ctypes.CDLL(str(lib_dir / name)), symbol)
            except (OSError, AttributeError):
                return None
            return ctypes.cast(fn, ctypes.c_void_p).value
    return None


def _torch_libgomp() -> str | None:
    """Path of the one GNU OpenMP runtime mapped into this process (torch's, loaded with it), or None."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:  # not Linux
        return None
    found = {line.split(maxsplit=5)[-1] for line in maps if "/libgomp" in line}
    return found.pop() if len(found) == 1 else None


def _openmp_flags() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(compiler flags, link inputs after the source) for OpenMP on torch's own libgomp; empty if none.

    The library must share torch's libgomp: a second copy (the compiler's -lgomp when torch's has another
    soname, as in wheels with a renamed copy) keeps its own thread count, which torch.set_num_threads does
    not reach, and its own pool of spinning threads beside torch's. Linking torch's file itself after
    --as-needed gives the library that file's soname, which the loader matches to the copy torch already
    mapped, and drops -lgomp. Another OpenMP runtime or none: plain build, one thread per loop.
    """
    gomp = _torch_libgomp()
    return (("-fopenmp",), ("-Wl,--as-needed", gomp)) if gomp else ((), ())


def build(verbose: bool = False, openmp: bool = True) -> Path | None:
    """Compile recurrence.c into the cache (if not there yet) -> the library's path, or None on failure."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    omp_flags, link = _openmp_flags() if openmp else ((), ())
    flags = (*CFLAGS, *omp_flags)
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join((*flags, *link)).encode() + platform.machine().encode() + _cpu_flags().encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"recurrence-{key}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # compile to a private name, then rename: concurrent processes (torchrun) never load a half-written file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        proc = subprocess.run(
            [compiler, *flags, "-o", tmp, str(SOURCE), *link], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            if verbose:
                print(proc.stderr)
            os.unlink(tmp)
            return None
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError):
        return None
    return target


def library() -> ctypes.CDLL | None:
    """The loaded native library with its sgemm set, or None (see the module docstring). Cached."""
    global _lib, _tried
    if _tried or not enabled():
        return _lib if enabled() else None
    _tried = True
    sgemm = _torch_symbol("sgemm_")  # the Fortran-interface sgemm
    if not sgemm:
        return None
    # the OpenMP build, else (compiler without OpenMP, runtime too old to load it) the single-threaded one
    lib = None
    for openmp in (True, False) if _openmp_flags()[0] else (False,):
        path = build(openmp=openmp)
        try:
            lib = ctypes.CDLL(str(path)) if path else None
        except OSError:
            lib = None
        if lib is not None:
            break
    if lib is None:
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    lib.avm_set_sgemm(sgemm)
    # the C function behind mkl_set_num_threads_local (a macro; the lowercase symbol is Fortran's, int *)
    lib.avm_set_mkl_threads_local(_torch_symbol("MKL_Set_Num_Threads_Local"))  # None: not MKL
    packing = [_torch_symbol(n) for n in ("cblas_sgemm_pack_get_size", "cblas_sgemm_pack", "cblas_sgemm_compute")]
    if all(packing):  # MKL's packed gemm (loops without it use plain sgemm)
        lib.avm_set_sgemm_pack(*packing)
    _lib = lib
    return _lib


def usable(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """library() when every tensor is a contiguous float32 CPU tensor, else None."""
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return None
    return library()
