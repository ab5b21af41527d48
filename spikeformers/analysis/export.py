"""Export a model for inference outside this package: ONNX, TorchScript, or a ``torch.export`` program.

::

    from spikeformers.analysis.export import export
    result = export(model, "model.onnx")            # checked in onnxruntime when it is installed
    print(result.max_abs_diff)

What the exported graph is
--------------------------
* **Inference only**, in eval mode with BatchNorm's running statistics; the model's input contract
  is kept: a static image batch ``[B, C, H, W]`` (repeated over the ``T`` time steps inside) or,
  with ``frames=True``, a frame sequence ``[B, T, C, H, W]`` (event data); output: the logits.
* **The batch size is dynamic** (the ``batch`` axis of input and output); everything else is fixed
  at the model's ``in_chans``, ``img_size`` and ``T``.
* **T is unrolled**: the neurons' loop over time steps becomes T copies of plain tensor ops
  (compare, multiply, add), which is what the multi-step neurons run without gradient.
* **The C kernels are off** (:func:`spikeformers.kernels.disabled`): the graph holds standard
  operators only, no custom ones; it computes the same values as the PyTorch model.

Formats: ``onnx`` (through ``torch.export`` and PyTorch's ONNX exporter; needs the ``export`` extra:
``onnx``, ``onnxscript``, and ``onnxruntime`` for the check) and ``pt2`` (the ``torch.export``
program the ONNX file is made from, ``torch.export.save``; load it with ``torch.export.load``, no
extra package). TorchScript is not offered: ``torch.jit.trace`` records the neurons' spike function
(an autograd Function carrying the surrogate gradient) as a Python call it cannot save.
Each export is checked by default: the saved file is loaded back and run on a batch of another
size than the one traced, and its logits are compared with the PyTorch model's. A model or
operator the exporter cannot handle raises :class:`~spikeformers.errors.UnsupportedError` naming
the step that failed and the exporter's reason.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import kernels
from ..errors import ConfigError, UnsupportedError
from ..serialization import atomic_write

__all__ = ["FORMATS", "ExportResult", "export", "example_input"]

FORMATS = ("onnx", "pt2")
_EXTRA = "pip install 'spikeformers[export]'"
TOLERANCE = 1e-4   # largest |logit difference| the check accepts


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: list            # with "batch" for the dynamic axis
    checked_batch: int | None    # the batch size the saved file was run on (None: not checked)
    max_abs_diff: float | None   # largest |logit difference| to PyTorch on that batch

    def __str__(self) -> str:
        shape = "[" + ",".join(map(str, self.input_shape)) + "]"
        s = f"{self.format} {self.path} (input {shape})"
        if self.max_abs_diff is not None:
            s += f"; checked on a batch of {self.checked_batch}: max |logit difference| {self.max_abs_diff:.2e}"
        return s


def example_input(model: nn.Module, batch: int = 2, frames: bool = False, seed: int = 0) -> torch.Tensor:
    """A random input of the model's shape: N(0,1) images ``[batch,C,H,W]``, or with ``frames``
    event counts (0, 1 or 2) ``[batch,T,C,H,W]``."""
    c, s, T = model.in_chans, model.img_size, getattr(model, "T", 1)
    g = torch.Generator().manual_seed(seed)
    if frames:
        return torch.randint(0, 3, (batch, T, c, s, s), generator=g).float()
    return torch.randn(batch, c, s, s, generator=g)


def _first_line(e: BaseException) -> str:
    """``Type: the first line of the message``, without terminal colours or the exporter's advice."""
    import re
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    line = re.split(r"\s*This is step \d/\d", line)[0].rstrip(" .")
    return f"{type(e).__name__}: {line[:300]}" if line else type(e).__name__


def _unsupported_ops(e: BaseException) -> list[str]:
    """Operator names an ONNX exporter error mentions, as ``aten.x`` / ``prims.x``."""
    import re
    seen = []
    for op in re.findall(r"(?:torch\.ops\.)?(?:aten|prims)(?:\.|::)[A-Za-z_][A-Za-z0-9_]*", str(e)):
        op = op.replace("torch.ops.", "").replace("::", ".")
        if op not in seen:
            seen.append(op)
    return seen[:5]


@contextlib.contextmanager
def _inference(model: nn.Module):
    """Eval mode, no gradient, C kernels off; the exporters' notes on optional packages we do not use
    (e.g. torchvision's operators) silenced."""
    import logging
    was = model.training
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    model.eval()
    log.setLevel(logging.ERROR)
    try:
        with kernels.disabled(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        model.train(was)
        log.setLevel(level)


def _capture(model: nn.Module, x: torch.Tensor, name: str):
    """``torch.export`` of the model with a dynamic batch axis."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        return torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as e:   # the exporter's own error types vary across PyTorch versions
        raise UnsupportedError(f"cannot export {name}: torch.export could not capture its graph with a dynamic "
                               f"batch ({_first_line(e)}); a Python branch on tensor values or an operator "
                               "without a graph form is the usual cause") from e


def _need(module: str, what: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UnsupportedError(f"{what} needs the '{module}' package: {_EXTRA}") from None


def export(model: nn.Module, path, format: str = "onnx", *, frames: bool = False, batch: int = 2,
           opset: int | None = None, optimize: bool = True, check: bool = True,
           tolerance: float = TOLERANCE) -> ExportResult:
    """Write ``model`` to ``path`` in ``format`` (:data:`FORMATS`; module docstring) and, with
    ``check``, load the file back, run it on a batch of ``batch + 1`` inputs and compare its logits
    with PyTorch's (a difference above ``tolerance`` raises). ``frames``: the input is a frame
    sequence ``[B,T,C,H,W]`` (event data) instead of static images. ``opset`` / ``optimize``: the
    ONNX opset (default: the exporter's) and whether the exporter simplifies the graph."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    for attr in ("in_chans", "img_size"):
        if not isinstance(getattr(model, attr, None), int):
            raise ConfigError(f"export needs a spikeformers model (with in_chans, img_size and T); "
                              f"{type(model).__name__} has no {attr}")
    name = getattr(model, "model_name", type(model).__name__)
    path = Path(path)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    x = example_input(model, batch, frames).to(device)
    if format == "onnx":
        _need("onnx", "ONNX export")
        _need("onnxscript", "ONNX export")
    with _inference(model):
        if format == "onnx":
            ep = _capture(model, x, name)
            try:
                prog = torch.onnx.export(ep, dynamo=True, optimize=optimize, opset_version=opset,
                                         input_names=["input"], output_names=["logits"], verbose=False)
            except Exception as e:
                ops = _unsupported_ops(e)
                raise UnsupportedError(f"cannot export {name} to ONNX: the graph was captured but not translated "
                                       + (f"(operators: {', '.join(ops)}) " if ops else "")
                                       + f"({_first_line(e)}); --format pt2 may still work") from e
            atomic_write(path, lambda tmp: prog.save(tmp))
        else:
            ep = _capture(model, x, name)
            atomic_write(path, lambda tmp: torch.export.save(ep, tmp))
        shape = ["batch", *x.shape[1:]]
        if not check:
            return ExportResult(path, format, shape, None, None)
        x2 = example_input(model, batch + 1, frames, seed=1).to(device)
        ref = model(x2)
        ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).float().cpu()
        got = _run_file(path, format, x2).cpu()
    diff = float((got - ref).abs().max()) if got.shape == ref.shape else float("inf")
    if got.shape != ref.shape or not diff <= tolerance:
        raise UnsupportedError(f"the exported {format} file of {name} does not reproduce the model: logits "
                               f"{list(got.shape)} vs {list(ref.shape)}, max |difference| {diff:.3g} > {tolerance:g} "
                               f"on a batch of {batch + 1} ({path} kept for inspection)")
    return ExportResult(path, format, shape, batch + 1, diff)


def _run_file(path: Path, format: str, x: torch.Tensor) -> torch.Tensor:
    """Logits of the saved file on ``x``."""
    if format == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise UnsupportedError(f"checking the ONNX file needs onnxruntime: {_EXTRA} (or check=False / "
                                   "--no-check)") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy()})[0]
        return torch.from_numpy(out)
    out = torch.export.load(str(path)).module()(x)
    return (out[0] if isinstance(out, (tuple, list)) else out).float()
