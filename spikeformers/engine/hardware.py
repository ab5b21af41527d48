"""Facts about the machine that decide how to compute: which CPU this is, whether bfloat16 is native
here, the practical matmul peak, and the precision ``auto`` resolves to.

bf16 is *native* on a CUDA GPU that supports it and on a CPU with AMX or AVX512-BF16. Elsewhere
(an AVX2-only CPU, for one) PyTorch emulates it, about 250x slower than float32 for a matmul:
nothing here times or chooses it there.
"""

from __future__ import annotations

import platform
import time

import torch

from ..errors import UnsupportedError

__all__ = ["cpu_name", "bf16_native", "matmul_peak", "resolve_precision", "device_name", "synchronize",
           "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This CPU's model name and the features that decide our speed, e.g. ``"AMD EPYC (avx512_bf16)"``
    or ``"Intel Xeon ... (amx, avx512_bf16)"``: the same 2-core budget ran 2x-6x apart in bf16
    across the machines we were given, so every figure should say where it came from."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    name = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        pass
    feats = [f for f, keys in (("amx", ("amx_bf16",)), ("avx512_bf16", ("avx512_bf16",)),
                                ("avx512", ("avx512f",)), ("avx2", ("avx2",))) if flags & set(keys)]
    if "avx512_bf16" in feats or "amx" in feats:   # the widest features are what tell machines apart
        feats = [f for f in feats if f not in ("avx512", "avx2")]
    return f"{name} ({', '.join(feats)})" if feats else name


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    """Best GFLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` (this machine's practical peak).
    Refuses bf16 where it is emulated (see :func:`bf16_native`): that would take minutes."""
    if dtype == torch.bfloat16 and not bf16_native(device):
        raise UnsupportedError(f"bf16 is not native on {device_name(device)}; its matmul is emulated, expected a "
                         "CPU with AMX or AVX512-BF16 or a CUDA GPU with bf16")
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for i in range(reps + 1):
        synchronize(device)
        t = time.perf_counter()
        a @ b
        synchronize(device)
        if i:
            best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def synchronize(device) -> None:
    """Wait for ``device``'s queued work (a no-op on CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device="cpu") -> str:
    """The CPU (:func:`cpu_name`) or GPU model behind ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def bf16_native(device="cpu") -> bool:
    """Whether bfloat16 arithmetic is native on ``device``: a CUDA GPU with bf16 support, or a CPU
    with AMX or AVX512-BF16 instructions."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return bool(amx or avx512_bf16)


_BF16_PROBE: dict[str, bool] = {}


def _bf16_matmul_faster(n: int = 1024, margin: float = 1.1) -> bool:
    """True when a bf16 matmul beats float32 by ``margin`` on this CPU (measured once per process,
    about 0.1 s with :func:`matmul_peak`). CPUs with AVX512-BF16 but without AMX differ: on an AMD
    EPYC (Zen 4) bf16 ran at 2.5x float32, on a 2-core Intel Xeon without AMX at 0.64x (152 vs 239
    GFLOP/s), where the default model trained 20 % slower under bf16 autocast."""
    if "cpu" not in _BF16_PROBE:
        _BF16_PROBE["cpu"] = matmul_peak(torch.bfloat16, n=n, reps=3) > margin * matmul_peak(
            torch.float32, n=n, reps=3)
    return _BF16_PROBE["cpu"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where bfloat16 is the faster number format, else ``"fp32"``; other
    values are returned as they are. A CUDA GPU: bf16 where supported. A CPU: bf16 with AMX; with
    AVX512-BF16 alone, bf16 only when a short matmul probe measures it faster than float32 (it is
    on some CPUs and not on others); without either, bf16 is emulated and fp32 is chosen. bf16
    autocast trains the default Fashion-MNIST recipe to the float32 accuracy within the seed spread
    (``docs/performance.md``)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
            return "bf16"
        if bf16_native(device):   # AVX512-BF16 without AMX: faster on some CPUs, slower on others
            return "bf16" if _bf16_matmul_faster() else "fp32"
        return "fp32"
    return "fp32"


