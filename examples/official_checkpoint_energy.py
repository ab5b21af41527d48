"""An official checkpoint -> our model with identical outputs -> accuracy -> energy per image.

    python examples/official_checkpoint_energy.py --pth spikformer_cifar10.pth \
        --source "ZK-Zhou/spikformer:cifar10/model.py:Spikformer" --kwargs '{"embed_dims": 384, "depths": 4}' \
        --data cifar10 --data-dir ~/data/cifar10

The ``.pth`` file is what the official repository's training script saved (a state dict, or a dict
holding it under ``model`` / ``state_dict``); ``--source`` names the official model file the weights
belong to (``spikeformers convert --help`` lists them) and ``--kwargs`` the arguments of its
constructor. Without ``--data`` the energy is measured on random images of the model's input shape.
"""

from __future__ import annotations

import argparse
import json

import torch

import spikeformers
from spikeformers.analysis.energy import measure
from spikeformers.engine import TrainConfig, evaluate
from spikeformers.engine.trainer import data_loaders


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pth", required=True, help="official checkpoint (.pth)")
    ap.add_argument("--source", required=True, help='"owner/repo:path:Name" of the official model file')
    ap.add_argument("--kwargs", default="{}", help="JSON of the official constructor's arguments")
    ap.add_argument("--data", default=None, help="dataset to evaluate on (e.g. cifar10); default: none")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--images", type=int, default=64, help="images for the energy measurement")
    a = ap.parse_args(argv)

    # 1. the official weights in our model: same state-dict names, official numerics
    model = spikeformers.from_official(a.pth, a.source, **json.loads(a.kwargs)).eval()
    print(f"{a.source} -> {model.model_name}: {sum(p.numel() for p in model.parameters()):,} parameters")

    # 2. accuracy on the test set, when a dataset is given
    out = {}
    if a.data:
        _, test, _ = data_loaders(TrainConfig.from_dict(data=a.data, data_dir=a.data_dir, batch_size=64, workers=0))
        out["accuracy"] = evaluate(model, test, progress=False)["acc"]
        print(f"test accuracy {out['accuracy']:.2f} %")
        x = next(iter(test))[0][: a.images]
    else:
        x = torch.randn(a.images, model.in_chans, model.img_size, model.img_size)

    # 3. energy per image under the paper's own accounting and the strict one
    report = measure(model, [x])
    for accounting in ("paper", "strict"):
        t = report.totals(accounting)
        out[accounting] = t["energy_mj"]
        print(f"{accounting:6s} energy {t['energy_mj']:.4f} mJ/image, mean firing rate {t['mean_firing_rate']:.3f}")
    return out


if __name__ == "__main__":
    main()
