"""Fashion-MNIST test accuracy of a trained checkpoint through the inference fast path: the plain
float32 model, the optimized + BatchNorm-folded float32 model, and the same with bf16 weights under
bf16 autocast (what ``spikeformers bench`` times).

    python benchmarks/bf16_inference_accuracy.py runs/fmnist_default_s3/best.safetensors [...]
"""

from __future__ import annotations

import argparse
import copy

import torch

from spikeformers.checkpoint import load_checkpoint
from spikeformers.speed import fuse, optimize
from spikeformers.train import TrainConfig, build_data, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    _, test, _ = build_data(TrainConfig(batch_size=500, data_dir=a.data_dir))
    for path in a.checkpoints:
        model, _ = load_checkpoint(path)
        plain = evaluate(model.eval(), test, progress=False)["acc"]
        fused = fuse(optimize(copy.deepcopy(model)).eval())
        f32 = evaluate(fused, test, progress=False)["acc"]
        with torch.autocast("cpu", torch.bfloat16):
            bf16 = evaluate(copy.deepcopy(fused).to(torch.bfloat16), test, progress=False)["acc"]
        print(f"{path}: float32 {plain:.2f} %, fused float32 {f32:.2f} %, fused bf16 {bf16:.2f} % "
              f"({bf16 - plain:+.2f} point)")


if __name__ == "__main__":
    main()
