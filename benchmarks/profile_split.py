"""Where a train step's (or inference's) CPU time goes: convolutions / linear layers, neurons,
BatchNorm, attention products, the rest.

    python benchmarks/profile_split.py --model sdt_8_384 [--precision bf16|fp32] [--infer [--int8]]
                                       [--no-optimize] [--threads 2]
    benchmarks/.sj-venv/bin/python benchmarks/profile_split.py --spikingjelly [--sj-compile] --model qkformer_10_384

Attribution is by the profiler's self time per operator: ``conv`` = oneDNN convolutions and the
dense matmuls of 1x1 convs / linears (``mm``, ``addmm``) with their backward, and with ``--int8``
oneDNN's int8 products (``int8 input`` is the exact conversion of their spike inputs); ``attention`` = the
batched products ``bmm`` (Q K^T V and friends); ``neurons`` = the fused neuron kernel's autograd
nodes and, at inference, its ``spikeformers::*`` calls (or the elementwise ops of the plain loop,
counted under ``elementwise``); ``batchnorm`` (PyTorch's and the C kernel's); the self time of an
autograd node that wraps a C kernel is the kernel's time;
``bn+lif`` the fused BatchNorm + LIF forward (``spikeformers.nn.fused.bn_fire``; its backward runs the LIF and
BatchNorm backward kernels, counted under those); ``copies`` (layout changes, dtype casts);
``pooling``; ``compiled`` (the fused code torch.compile generated; products inside it stay under
``conv``); ``other`` (``--top`` lists the operators behind every category). The last line sums the
products (conv / matmul and attention) against everything else.

``--spikingjelly`` profiles SpikingJelly 2.0.0's model of the same name instead, with the train
step of ``compare_spikingjelly.py`` (float32, its ``torch`` backend, SGD with momentum): run it with
the interpreter of the virtual environment that script creates (``benchmarks/.sj-venv``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import profile

CATS = [
    ("conv", ("mkldnn_convolution", "convolution_backward", "aten::mm", "aten::addmm", "aten::_convolution",
              "_TapMatrix", "onednn::qlinear", "onednn::qconv")),
    ("int8 input", ("spikeformers::to_uint8",)),
    ("bn+lif", ("_BatchNormLIF", "spikeformers::bnlif")),
    ("attention", ("aten::bmm", "aten::baddbmm")),
    ("neurons", ("_FusedLIF", "_FusedTernary", "_HeavisideBackward", "_Heaviside", "spikeformers::lif",
                 "spikeformers::ternary", "sj_lif", "MultiStepLIF", "neuron_kernel")),   # the last three: SpikingJelly
    ("batchnorm", ("batch_norm", "_BatchNormTrain", "spikeformers::bn")),
    ("copies", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    ("elementwise", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::ge", "aten::lt", "aten::sigmoid",
                     "aten::where", "aten::abs", "aten::sum", "aten::mean", "aten::fill_")),
    ("pooling", ("max_pool", "_MaxPool", "spikeformers::maxpool")),
    ("compiled", ("CompiledFxGraph", "Torch-Compiled Region", "TorchDynamo")),
]
PRODUCTS = ("conv", "attention")


def category(name: str) -> str:
    for cat, keys in CATS:
        if any(k in name for k in keys):
            return cat
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sdt_8_384")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--infer", action="store_true", help="profile inference instead of a train step")
    ap.add_argument("--no-optimize", action="store_true")
    ap.add_argument("--int8", action="store_true",
                    help="inference with int8 products (spikeformers.accel.quantize_int8), as spikeformers bench times it")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--native", action="store_true",
                    help="the model's own input size, channels and T (default: T=4, 32x32x3, batch 16, as bench)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--top", type=int, default=0, help="also print the N operators with the most self time")
    ap.add_argument("--spikingjelly", action="store_true",
                    help="profile SpikingJelly 2.0.0's model instead (run with benchmarks/.sj-venv/bin/python)")
    ap.add_argument("--sj-compile", action="store_true", help="with --spikingjelly: torch.compile its model")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.native:
        from spikeformers.models import model_entry
        d = model_entry(a.model).defaults
        x, y = torch.randn(a.batch, d["in_chans"], d["img_size"], d["img_size"]), torch.randint(0, 10, (a.batch,))
    else:
        x, y = torch.randn(a.batch, 3, 32, 32), torch.randint(0, 10, (a.batch,))
    step, what = (_sj_step if a.spikingjelly else _our_step)(a, x, y)
    for _ in range(3 if a.sj_compile else 1):   # compiled: the first calls build the graphs
        step()
    with profile() as prof:
        for _ in range(a.steps):
            step()
    split = defaultdict(float)
    for ev in prof.key_averages():
        split[category(ev.key)] += ev.self_cpu_time_total
    total = sum(split.values())
    print(f"{a.model} {what}, {torch.get_num_threads()} threads: {total / a.steps / 1e3:.0f} ms per step (profiled)")
    for cat, t in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:12s} {100 * t / total:5.1f} %  {t / a.steps / 1e3:7.1f} ms")
    prod = sum(split[c] for c in PRODUCTS)
    print(f"products (conv / matmul, attention) {prod / a.steps / 1e3:.1f} ms, "
          f"everything else {(total - prod) / a.steps / 1e3:.1f} ms per step")
    if a.top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))


def _our_step(a, x, y):
    from spikeformers.accel import keep_freed_memory
    keep_freed_memory()
    from spikeformers.engine.optim import build_optimizer

    from spikeformers.accel import fuse, optimize, quantize_int8
    from spikeformers.models import create_model
    model = create_model(a.model) if a.native else create_model(a.model, T=4, img_size=32, num_classes=10)
    if not a.no_optimize:
        optimize(model)
    ac = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16")
    opt = build_optimizer("sgd", list(model.parameters()), lr=0.01)   # momentum 0.9, fused: as spikeformers bench
    if a.infer:
        model.eval()
        if not a.no_optimize:
            fuse(model)
            if a.int8:
                quantize_int8(model)
            if a.precision == "bf16":
                model.to(torch.bfloat16)   # as spikeformers bench: weights cast once

    def step():
        if a.infer:
            with torch.inference_mode(), ac:
                model(x)
            return
        with ac:
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    what = (f"{'inference' if a.infer else 'train step'}, {a.precision}, "
            f"{'plain layers' if a.no_optimize else 'optimized'}{', int8 products' if a.int8 else ''}")
    return step, what


def _sj_step(a, x, y):
    try:
        import spikingjelly  # noqa: F401
    except ImportError:
        raise SystemExit("--spikingjelly needs SpikingJelly: run this script with benchmarks/.sj-venv/bin/python "
                         "(python benchmarks/compare_spikingjelly.py creates that environment)") from None
    from compare_spikingjelly import SJ_MODELS, build_sj_model, sj_steps
    if a.model not in SJ_MODELS:
        raise SystemExit(f"--spikingjelly knows {', '.join(SJ_MODELS)}; got {a.model!r}")
    torch.manual_seed(0)
    model = build_sj_model(a.model)
    train, infer = sj_steps(model, x, y, a.sj_compile)
    model.train(not a.infer)
    what = (f"SpikingJelly 2.0.0 {'inference' if a.infer else 'train step'}, float32"
            f"{', torch.compile' if a.sj_compile else ', eager'}")
    return (infer if a.infer else train), what


if __name__ == "__main__":
    main()
