"""Fashion-MNIST test accuracy of a trained checkpoint through the inference fast paths: the plain
float32 model, the optimized + BatchNorm-folded float32 model, the same with bf16 weights under
bf16 autocast (what ``spikeformers bench --no-int8`` times), and that with int8
products (``spikeformers.accel.quantize_int8``, what ``spikeformers bench`` times by default on a CPU).

    python benchmarks/inference_accuracy.py runs/a2os2a_fmnist/best.safetensors [...]
"""

from __future__ import annotations

import argparse
import copy

import torch

from spikeformers.accel import Int8Products, fuse, int8_inference, optimize
from spikeformers.engine import TrainConfig, evaluate, load_checkpoint
from spikeformers.engine.trainer import data_loaders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    _, test, _ = data_loaders(TrainConfig.from_dict(batch_size=500, data_dir=a.data_dir))
    for path in a.checkpoints:
        model, _ = load_checkpoint(path)
        plain = evaluate(model.eval(), test, progress=False)["acc"]
        fused = fuse(optimize(copy.deepcopy(model)).eval())
        f32 = evaluate(fused, test, progress=False)["acc"]
        with torch.autocast("cpu", torch.bfloat16):
            bf16 = evaluate(copy.deepcopy(fused).to(torch.bfloat16), test, progress=False)["acc"]
            q = int8_inference(model)
            int8 = evaluate(q, test, progress=False)["acc"]
        wrapped = [m for m in q.modules() if isinstance(m, Int8Products)]
        n_int8 = sum(m.int8_calls > 0 for m in wrapped)
        print(f"{path}: float32 {plain:.2f} %, fused float32 {f32:.2f} %, fused bf16 {bf16:.2f} % "
              f"({bf16 - plain:+.2f} point), int8 products {int8:.2f} % ({int8 - plain:+.2f} point; "
              f"{n_int8} of {len(wrapped)} layers ran in int8, the others had non-integer inputs)")


if __name__ == "__main__":
    main()
