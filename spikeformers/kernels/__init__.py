"""Fused multi-step neuron kernels, a training BatchNorm and max pooling (CPU), built at run time,
with a fallback.

``csrc/neurons.c`` holds the forward and the hand-written backward of LIF / IF and of the ternary
neuron for float32 and bfloat16 tensors laid out ``[T, N]``; ``csrc/batchnorm.c`` the training
BatchNorm over a channels-last ``[rows, C]`` block and its forward fused with a LIF;
``csrc/pool.c`` channels-last max pooling. On first use they are compiled with the
system C compiler (``$CC``, else ``cc`` / ``gcc`` / ``clang``) with ``-fopenmp`` into
``$SPIKEFORMERS_CACHE`` (default ``~/.cache/spikeformers/kernels``), keyed by a hash of the sources,
the compiler and the flags, and loaded with :mod:`ctypes` (which releases the GIL). The C code
splits its work across PyTorch's own OpenMP threads (it binds to the ``libgomp.so.1`` torch has
loaded; checked at load); built without OpenMP, Python splits large tensors across
``torch.get_num_threads()`` threads instead. No torch headers, no ninja, a few seconds to build.

If no compiler is found, the build fails, or ``SPIKEFORMERS_KERNELS=0`` is set, :func:`available`
returns False and the neurons run their plain PyTorch loop instead (same spikes in float32: the
kernel repeats the loop's IEEE operations in the same order, built with ``-ffp-contract=off``).
``python -m spikeformers.kernels`` builds the kernel and prints where it is (or why not).

CUDA tensors go to the Triton twin of the same kernels (:mod:`spikeformers.kernels.gpu`) when
Triton imports, else to the plain loop as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["available", "status", "supports", "disabled", "lif_forward", "lif_backward",
           "ternary_forward", "ternary_backward", "batchnorm_supports", "batchnorm_forward",
           "batchnorm_backward", "update_running_stats", "bnlif_supports", "bnlif_forward", "maxpool_supports",
           "maxpool_forward", "maxpool_backward", "to_uint8_exact"]

_SRCS = [Path(__file__).with_name("csrc") / f for f in ("neurons.c", "batchnorm.c", "pool.c", "convert.c")]
_COMMON = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp"]   # -fopenmp dropped if unsupported
_STRICT = _COMMON + ["-ffp-contract=off", "-fno-fast-math"]   # forward: bit-identical to the loop
_FAST = _COMMON + ["-ffast-math", "-fno-finite-math-only", "-fopenmp-simd"]  # backward: vector expf
_lock = threading.Lock()
_lib = None
_why = None  # why the kernel is unavailable (None: not tried yet or loaded)
_pool: ThreadPoolExecutor | None = None
_enabled = True  # see disabled()
_PAR_MIN = 1 << 15  # elements per time step below which one thread does the whole block

_CHARGE = {"decay": 0, "decay_r": 1, "nodecay": 2, "nodecay_r": 3, "if": 4}
_RESET = {"soft": 0, "zero": 1, "value": 2}
_SURROGATE = {"sigmoid": (0, "alpha"), "atan": (1, "alpha"), "straight_through": (2, "width"),
              "triangle": (3, "width")}


def _env_disabled() -> bool:
    """``SPIKEFORMERS_KERNELS=0`` (or false/off/no) switches the C and the Triton kernels off."""
    return os.environ.get("SPIKEFORMERS_KERNELS", "1").lower() in ("0", "false", "off", "no")


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _cache_dir() -> Path:
    root = os.environ.get("SPIKEFORMERS_CACHE")
    return Path(root) / "kernels" if root else Path.home() / ".cache" / "spikeformers" / "kernels"


def _cpu_id() -> bytes:
    """-march=native code is only valid on this kind of CPU: the cache key includes its flags."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((ln for ln in f if ln.startswith((b"flags", b"Features"))), b"")
    except OSError:
        return platform.processor().encode()


def _build(flags: list[str], tag: str) -> Path:
    try:
        return _build_with(flags, tag)
    except RuntimeError:
        if "-fopenmp" not in flags:
            raise
        return _build_with([f for f in flags if f != "-fopenmp"], tag)   # serial; Python splits


def _build_with(flags: list[str], tag: str) -> Path:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
    src = b"".join(f.read_bytes() for f in sorted(_SRCS[0].parent.glob("*.[ch]")))   # headers too
    key = hashlib.sha256(src + cc.encode() + " ".join(flags).encode() + sys.platform.encode()
                         + platform.machine().encode() + _cpu_id()).hexdigest()[:16]
    out = _cache_dir() / f"neurons-{tag}-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_so = Path(tmp) / out.name
        r = subprocess.run([cc, *flags, "-o", str(tmp_so), *map(str, _SRCS), "-lm"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} failed to build {', '.join(f.name for f in _SRCS)}: {r.stderr.strip()[:2000]}")
        os.replace(tmp_so, out)  # atomic: concurrent builders never load a half-written file
    return out


def _declare(lib) -> None:
    """Argument types of the C functions (a wrong call would otherwise corrupt memory silently)."""
    i64, f, i, p = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
    for suf in ("f32", "bf16"):
        getattr(lib, f"lif_forward_{suf}").argtypes = [p, p, p, i64, i64, i64, i64, i, i, f, f, f, f, f]
        getattr(lib, f"lif_backward_{suf}").argtypes = [p, p, p, i64, i64, i64, i64, i, i, f, f, f, f, i, f]
        getattr(lib, f"ternary_forward_{suf}").argtypes = [p, p, p, i64, i64, i64, i64, f, f]
        getattr(lib, f"ternary_backward_{suf}").argtypes = [p, p, p, i64, i64, i64, i64, i, f, f, i, f]
        getattr(lib, f"bn_forward_{suf}").argtypes = [p, p, p, p, p, p, p, i64, i64, i64, i64, f]
        getattr(lib, f"bn_backward_{suf}").argtypes = [p, p, p, p, p, p, p, p, i64, i64, i64, i64]
        getattr(lib, f"bnlif_forward_{suf}").argtypes = [p, p, p, p, p, p, p, p, i64, i64, i64, i64, f, i64, i,
                                                         f, f, f, f]
        getattr(lib, f"maxpool_forward_{suf}").argtypes = [p, p, p] + [i64] * 8 + [i, i, i]
        getattr(lib, f"maxpool_backward_{suf}").argtypes = [p, p, p] + [i64] * 8 + [i, i, i]
        getattr(lib, f"to_uint8_exact_{suf}").argtypes = [p, p, p, i64, i64]
        for n in ("lif_forward", "lif_backward", "ternary_forward", "ternary_backward", "bn_forward", "bn_backward",
                  "bnlif_forward", "maxpool_forward", "maxpool_backward", "to_uint8_exact"):
            getattr(lib, f"{n}_{suf}").restype = None
    lib.bn_update_running.argtypes = [p, p, p, p, p, i64, ctypes.c_double, i64]
    lib.bn_update_running.restype = None


class _Lib:
    """The neuron, BatchNorm and fused BatchNorm + LIF forward functions and max pooling from the
    strict build (the fused kernel computes exactly the BatchNorm output of bn_forward, then the
    LIF forward; pooling needs its NaN test); the other backward functions (no bit-exactness to
    keep) from the fast-math build."""

    def __init__(self, strict, fast):
        _declare(strict)
        _declare(fast)
        self._name, self._strict = strict._name, strict
        for suf in ("f32", "bf16"):
            for n in ("lif_forward", "ternary_forward", "bn_forward", "bnlif_forward", "maxpool_forward",
                      "maxpool_backward", "to_uint8_exact"):
                setattr(self, f"{n}_{suf}", getattr(strict, f"{n}_{suf}"))
            for n in ("lif_backward", "ternary_backward", "bn_backward"):
                setattr(self, f"{n}_{suf}", getattr(fast, f"{n}_{suf}"))
        self.bn_update_running = strict.bn_update_running
        # threads come from OpenMP inside C only if both builds have it and share PyTorch's runtime
        self.openmp = all(_shares_torch_openmp(lib) for lib in (strict, fast))


def _shares_torch_openmp(lib) -> bool:
    """True when ``lib`` was built with OpenMP and runs in PyTorch's OpenMP runtime (it follows
    ``torch.set_num_threads``); a second runtime would add a second pool of spinning threads."""
    f = lib.spikeformers_openmp_threads
    f.restype = ctypes.c_int
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(n + 1)
        return f() == n + 1
    finally:
        torch.set_num_threads(n)


def _load():
    global _lib, _why
    if _lib is not None or _why is not None:
        return _lib
    with _lock:
        if _lib is not None or _why is not None:
            return _lib
        if _env_disabled():
            _why = "disabled by SPIKEFORMERS_KERNELS=0"
            return None
        try:
            strict = ctypes.CDLL(str(_build(_STRICT, "strict")))
            fast = ctypes.CDLL(str(_build(_FAST, "fast")))
            _lib = _Lib(strict, fast)
        except (OSError, RuntimeError, AttributeError) as e:
            _why = f"{type(e).__name__}: {e}"
            warnings.warn(f"spikeformers: fused neuron kernel unavailable ({_why}); using the plain "
                          "PyTorch loop (same results, slower)", RuntimeWarning, stacklevel=3)
    return _lib


def available() -> bool:
    """True when the compiled kernel is loaded (building it on first call)."""
    return _lib is not None or _load() is not None


def status() -> str:
    """One line: where the kernel is, or why it is not used."""
    cpu = f"fused neuron kernel: {_lib._name}" if _load() is not None else f"fused neuron kernel unavailable: {_why}"
    if torch.cuda.is_available():
        gpu = "Triton kernels for CUDA" if triton_available() else f"Triton kernels unavailable: {_triton_why}"
        return f"{cpu}; {gpu}"
    return cpu


@contextlib.contextmanager
def disabled():
    """Run the plain PyTorch loops inside this block (tests compare both paths with it)."""
    global _enabled
    old, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = old


_triton = None       # the spikeformers.kernels.gpu module once imported
_triton_why = None   # why it could not be imported


def triton_available() -> bool:
    """True when the Triton kernels for CUDA tensors import (Triton installed, a GPU build)."""
    global _triton, _triton_why
    if _triton is None and _triton_why is None:
        if _env_disabled():
            _triton_why = "disabled by SPIKEFORMERS_KERNELS=0"
            return False
        try:
            from . import gpu
            _triton = gpu
        except Exception as e:  # no triton, or a triton that does not load
            _triton_why = f"{type(e).__name__}: {e}"
    return _triton is not None


def supports(x: torch.Tensor) -> bool:
    """Whether ``x[T, ...]`` can go through a fused kernel: a float32/bfloat16 tensor (float16 too
    on CUDA) whose every time step is one dense block (contiguous or channels-last inside), on the
    CPU with the C kernel loaded or on CUDA with Triton. Under ``torch.compile`` the plain loop is
    traced instead (the compiler fuses it itself)."""
    if x.dim() < 1 or not _enabled or x.numel() == 0 or torch.compiler.is_compiling():
        return False
    if x.device.type == "cuda":
        ok = x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        return ok and _dense_time_major(x) and triton_available()
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    return _dense_time_major(x) and available()


def _dense_time_major(x: torch.Tensor) -> bool:
    """x[t] is one dense block of x[0].numel() elements at offset t * stride(0)."""
    if x.is_contiguous():
        return True
    n = x[0].numel() if x.dim() > 1 else 1
    if x.shape[0] > 1 and x.stride(0) != n:
        return False
    return is_dense(x[0]) if x.dim() > 1 else True


def is_dense(x: torch.Tensor) -> bool:
    """``x`` fills its memory exactly, in some order of its axes (no gaps, no repeats): contiguous,
    channels-last, or any permutation of a contiguous tensor."""
    expect = 1
    for s, d in sorted((s, d) for s, d in zip(x.stride(), x.shape) if d != 1):
        if s != expect:
            return False
        expect *= d
    return True


def _run(fn, T: int, N: int, *args, unit: int = 256, parallel: bool | None = None) -> None:
    """Call ``fn(..., T, N, lo, hi, ...)`` over the range [0, N) (see :func:`_run_range`)."""
    head, tail = args
    _run_range(fn, N, (*head, T, N), tail, unit=unit, parallel=N >= _PAR_MIN if parallel is None else parallel)


def _run_range(fn, N: int, head: tuple, tail: tuple, unit: int = 1, parallel: bool = True) -> None:
    """Call ``fn(*head, lo, hi, *tail)``: once on the whole range [0, N) when the library splits
    it across PyTorch's OpenMP threads itself, else on slices (multiples of ``unit``) in a thread
    pool when ``parallel``."""
    global _pool
    nt = max(1, torch.get_num_threads())
    if nt == 1 or _lib.openmp or not parallel:
        if torch.autograd.profiler._is_profiler_enabled:   # the kernels are visible to profilers
            with torch.profiler.record_function(f"spikeformers::{fn.__name__}"):
                fn(*head, 0, N, *tail)
        else:
            fn(*head, 0, N, *tail)
        return
    if _pool is None or _pool._max_workers < nt:
        _pool = ThreadPoolExecutor(max_workers=nt, thread_name_prefix="spikeformers-kernel")
    step = -(-N // nt)
    step = -(-step // unit) * unit  # whole blocks
    futs = [_pool.submit(fn, *head, lo, min(N, lo + step), *tail) for lo in range(0, N, step)]
    for f in futs:
        f.result()


def _like(grad: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``grad`` in ``ref``'s dtype and memory layout (the kernels index both the same way)."""
    grad = grad.to(ref.dtype)
    return grad if grad.stride() == ref.stride() else torch.empty_like(ref).copy_(grad)


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _suffix(x: torch.Tensor) -> str:
    return "f32" if x.dtype == torch.float32 else "bf16"


def _surrogate_args(surrogate) -> tuple[int, float]:
    kind, attr = _SURROGATE[surrogate.name]
    return kind, float(getattr(surrogate, attr))


def lif_kinds(neuron) -> tuple[int, int, float, float, float]:
    """(charge kind, reset kind, tau, c, r) of a LIF/IF neuron, mirroring ``charge``/``reset``."""
    r = 0.0 if neuron.v_reset is None else neuron.v_reset
    tau = getattr(neuron, "tau", None)
    if tau is None:  # IF
        ck, tau, c = _CHARGE["if"], 1.0, 0.0
    elif neuron.decay_input:
        ck, c = (_CHARGE["decay"] if r == 0.0 else _CHARGE["decay_r"]), 0.0
    else:
        ck, c = (_CHARGE["nodecay"] if r == 0.0 else _CHARGE["nodecay_r"]), 1.0 - 1.0 / tau
    rk = _RESET["soft"] if neuron.v_reset is None else (_RESET["zero"] if r == 0.0 else _RESET["value"])
    return ck, rk, float(tau), float(c), float(r)


def lif_forward(neuron, x: torch.Tensor, keep_h: bool):
    """Spikes (and the pre-spike potentials H if ``keep_h``) of a fixed-coefficient LIF/IF."""
    ck, rk, tau, c, r = lif_kinds(neuron)
    v0 = 0.0 if neuron.v_reset is None else neuron.v_reset
    if x.is_cuda:
        return _triton.lif_forward(ck, rk, tau, c, r, neuron.v_threshold, v0, x, keep_h)
    T = x.shape[0]
    N = x.numel() // T
    s = torch.empty_like(x)
    hs = torch.empty_like(x) if keep_h else None
    fn = getattr(_load(), f"lif_forward_{_suffix(x)}")
    _run(fn, T, N, (x.data_ptr(), s.data_ptr(), hs.data_ptr() if keep_h else None),
         (ck, rk, tau, c, r, neuron.v_threshold, v0))
    return s, hs


def lif_backward(neuron, grad_s: torch.Tensor, hs: torch.Tensor, a: float, b: float) -> torch.Tensor:
    _, rk, _, _, r = lif_kinds(neuron)
    grad_s = _like(grad_s, hs)
    sk, alpha = _surrogate_args(neuron.surrogate)
    if hs.is_cuda:
        return _triton.lif_backward(rk, neuron.detach_reset, a, b, neuron.v_threshold, r, sk, alpha, grad_s, hs)
    T = hs.shape[0]
    N = hs.numel() // T
    gx = torch.empty_like(hs)
    fn = getattr(_load(), f"lif_backward_{_suffix(hs)}")
    _run(fn, T, N, (grad_s.data_ptr(), hs.data_ptr(), gx.data_ptr()),
         (rk, int(neuron.detach_reset), a, b, neuron.v_threshold, r, sk, alpha))
    return gx


def ternary_forward(neuron, x: torch.Tensor, keep_u: bool):
    if x.is_cuda:
        return _triton.ternary_forward(neuron.decay, neuron.v_threshold, x, keep_u)
    T = x.shape[0]
    N = x.numel() // T
    o = torch.empty_like(x)
    us = torch.empty_like(x) if keep_u else None
    fn = getattr(_load(), f"ternary_forward_{_suffix(x)}")
    _run(fn, T, N, (x.data_ptr(), o.data_ptr(), us.data_ptr() if keep_u else None),
         (neuron.decay, neuron.v_threshold))
    return o, us


def ternary_backward(neuron, grad_o: torch.Tensor, us: torch.Tensor) -> torch.Tensor:
    grad_o = _like(grad_o, us)
    sk, alpha = _surrogate_args(neuron.surrogate)
    if us.is_cuda:
        return _triton.ternary_backward(neuron.detach_reset, neuron.decay, neuron.v_threshold, sk, alpha, grad_o, us)
    T = us.shape[0]
    N = us.numel() // T
    gx = torch.empty_like(us)
    fn = getattr(_load(), f"ternary_backward_{_suffix(us)}")
    _run(fn, T, N, (grad_o.data_ptr(), us.data_ptr(), gx.data_ptr()),
         (int(neuron.detach_reset), neuron.decay, neuron.v_threshold, sk, alpha))
    return gx


def batchnorm_supports(x: torch.Tensor) -> bool:
    """Whether the C BatchNorm kernel takes ``x``: a CPU float32/bfloat16 ``[N, C, H, W]`` whose
    memory is one row-major ``[N*H*W, C]`` matrix (channels-last, or the ``[N, C, L, 1]`` view of
    a channels-innermost token matrix), with the kernel loaded and outside ``torch.compile``."""
    if (x.dim() != 4 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16)
            or not _enabled or x.numel() == 0 or torch.compiler.is_compiling()):
        return False
    return x.permute(0, 2, 3, 1).is_contiguous() and available()


def _bn_parallel(M: int, C: int) -> bool:
    """The BatchNorm kernels' own condition (SF_PAR_BEGIN in batchnorm.c) for splitting channels."""
    return M * C >= _PAR_MIN and C >= 32


def _f32(t: torch.Tensor | None):
    """A contiguous float32 ``t`` for its data pointer (``t`` itself when it is one already)."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.detach().float().contiguous()


def batchnorm_forward(x: torch.Tensor, weight, bias, eps: float):
    """Training-mode BatchNorm of a channels-last ``x`` (see :func:`batchnorm_supports`): returns
    ``y`` (x's dtype and layout) and the float32 batch ``mean``, biased ``var`` and ``rstd``."""
    C = x.shape[1]
    M = x.numel() // C
    y = torch.empty_like(x)
    mean, var, rstd = (torch.empty(C) for _ in range(3))
    w, b = _f32(weight), _f32(bias)
    _run(getattr(_load(), f"bn_forward_{_suffix(x)}"), M, C,
         (x.data_ptr(), y.data_ptr(), _ptr(w), _ptr(b), mean.data_ptr(), var.data_ptr(), rstd.data_ptr()),
         (float(eps),), unit=16, parallel=_bn_parallel(M, C))
    return y, mean, var, rstd


def batchnorm_backward(grad_y: torch.Tensor, x: torch.Tensor, weight, mean, rstd):
    """Gradients (x, weight, bias) of :func:`batchnorm_forward`; ``grad_y`` in any layout."""
    C = x.shape[1]
    M = x.numel() // C
    grad_y = _like(grad_y, x)
    gx = torch.empty_like(x)
    gw, gb = torch.empty(C), torch.empty(C)
    w = _f32(weight)
    _run(getattr(_load(), f"bn_backward_{_suffix(x)}"), M, C,
         (grad_y.data_ptr(), x.data_ptr(), gx.data_ptr(), _ptr(w),
          mean.data_ptr(), rstd.data_ptr(), gw.data_ptr(), gb.data_ptr()),
         (), unit=16, parallel=_bn_parallel(M, C))
    return gx, gw, gb


def update_running_stats(bn, mean: torch.Tensor, var: torch.Tensor, n: int) -> bool:
    """``bn``'s running-average update (``num_batches_tracked``, ``running_mean``, ``running_var``
    from the float32 batch ``mean`` and biased ``var`` of ``n`` values per channel) in one C call,
    as nn.BatchNorm does it (momentum, or a cumulative average for ``momentum=None``); False, and
    nothing done, when the buffers are not contiguous float32 CPU tensors or the kernel is off."""
    rm, rv, nbt = bn.running_mean, bn.running_var, bn.num_batches_tracked
    if not (_enabled and _lib is not None and rm.dtype == rv.dtype == mean.dtype == var.dtype == torch.float32
            and rm.device.type == "cpu" and rm.is_contiguous() and rv.is_contiguous() and mean.is_contiguous()
            and var.is_contiguous() and (nbt is None or (nbt.dtype == torch.int64 and nbt.device.type == "cpu"))):
        return False
    _lib.bn_update_running(rm.data_ptr(), rv.data_ptr(), None if nbt is None else nbt.data_ptr(), mean.data_ptr(),
                           var.data_ptr(), rm.numel(), -1.0 if bn.momentum is None else float(bn.momentum), n)
    return True


def bnlif_supports(x: torch.Tensor, T: int) -> bool:
    """Whether :func:`bnlif_forward` takes ``x`` (see :func:`batchnorm_supports`) with rows a
    multiple of ``T``. The neuron must be a fixed-coefficient LIF with decay_input and a surrogate
    the kernels know; the caller checks that (:func:`spikeformers.nn.fused.bn_fire`)."""
    return T >= 1 and batchnorm_supports(x) and (x.numel() // x.shape[1]) % T == 0


def bnlif_forward(x: torch.Tensor, weight, bias, eps: float, neuron, T: int, keep_h: bool = True):
    """Training BatchNorm of ``x`` (as :func:`batchnorm_forward`) fed straight into the LIF
    ``neuron`` over ``T`` time steps (rows ``t * M/T ...``): the spikes (x's dtype and layout), the
    membranes H for :func:`lif_backward` (None unless ``keep_h``) and the batch ``mean``, ``var``,
    ``rstd``; the BatchNorm output is never stored."""
    C = x.shape[1]
    M = x.numel() // C
    _, rk, tau, _, r = lif_kinds(neuron)
    v0 = 0.0 if neuron.v_reset is None else neuron.v_reset
    s = torch.empty_like(x)
    hs = torch.empty_like(x) if keep_h else None
    mean, var, rstd = (torch.empty(C) for _ in range(3))
    w, b = _f32(weight), _f32(bias)
    _run(getattr(_load(), f"bnlif_forward_{_suffix(x)}"), M, C,
         (x.data_ptr(), s.data_ptr(), _ptr(hs), _ptr(w), _ptr(b), mean.data_ptr(), var.data_ptr(), rstd.data_ptr()),
         (float(eps), T, rk, tau, r, neuron.v_threshold, v0), unit=16, parallel=_bn_parallel(M, C))
    return s, hs, mean, var, rstd


def maxpool_supports(x: torch.Tensor) -> bool:
    """Whether the C max pooling takes ``x``: as :func:`batchnorm_supports` (a channels-last
    CPU float32 / bfloat16 4-D tensor, kernels loaded, not under ``torch.compile``)."""
    return batchnorm_supports(x)


def _pool_sizes(shape, k: int, s: int, p: int) -> tuple[int, ...]:
    N, C, H, W = shape
    return N, H, W, C, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1


def maxpool_forward(x: torch.Tensor, k: int, s: int, p: int, keep_arg: bool):
    """Max pooling of a channels-last ``x`` (window ``k``, stride ``s``, padding ``p``, floor mode):
    the output (x's dtype, channels-last) and, if ``keep_arg``, each output's winning tap as uint8."""
    N, H, W, C, Ho, Wo = _pool_sizes(x.shape, k, s, p)
    y = torch.empty(N, C, Ho, Wo, dtype=x.dtype, memory_format=torch.channels_last)
    arg = torch.empty(N, C, Ho, Wo, dtype=torch.uint8, memory_format=torch.channels_last) if keep_arg else None
    _run_range(getattr(_load(), f"maxpool_forward_{_suffix(x)}"), N,
               (x.data_ptr(), y.data_ptr(), _ptr(arg), N, H, W, C, Ho, Wo), (k, s, p),
               parallel=N * Ho * Wo * C >= _PAR_MIN)
    return y, arg


def maxpool_backward(grad_y: torch.Tensor, arg: torch.Tensor, in_shape, dtype, k: int, s: int, p: int) -> torch.Tensor:
    """Gradient of :func:`maxpool_forward` for its input (``in_shape``, ``dtype``, channels-last)."""
    N, H, W, C, Ho, Wo = _pool_sizes(in_shape, k, s, p)
    grad_y = grad_y.to(dtype).contiguous(memory_format=torch.channels_last)
    gx = torch.empty(in_shape, dtype=dtype, memory_format=torch.channels_last)
    _run_range(getattr(_load(), f"maxpool_backward_{_suffix(gx)}"), N,
               (grad_y.data_ptr(), arg.data_ptr(), gx.data_ptr(), N, H, W, C, Ho, Wo), (k, s, p),
               parallel=N * H * W * C >= _PAR_MIN)
    return gx


def to_uint8_exact(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` (a CPU float32 / bfloat16 tensor, dense in any dimension order) as uint8 with the same
    strides, when every value is an integer in [0, 255] (binary spikes, spike counts), else None.
    One pass in C when the kernels are loaded; PyTorch's cast and a comparison otherwise."""
    dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
    if dense and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and _enabled \
            and not torch.compiler.is_compiling() and available():
        y = torch.empty_like(x, dtype=torch.uint8)
        bad = torch.zeros(1, dtype=torch.int32)
        _run_range(getattr(_lib, f"to_uint8_exact_{_suffix(x)}"), x.numel(),
                   (x.data_ptr(), y.data_ptr(), bad.data_ptr()), (), unit=64, parallel=x.numel() >= _PAR_MIN)
        return None if bad.item() else y
    if not (x.is_floating_point() and bool(((x >= 0) & (x <= 255)).all())):
        return None
    y = x.to(torch.uint8)
    return y if torch.equal(y.to(x.dtype), x) else None
