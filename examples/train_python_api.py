"""Training from Python: a nested config, the Trainer's phases, then the saved checkpoint.

    python examples/train_python_api.py [--epochs 1] [--max-steps 50] [--out runs/api_example]

The same run as ``spikeformers train --epochs 1 --max-steps 50 --out runs/api_example`` (Fashion-MNIST,
the default A²OS²A model). Every option has a section (model, data, augment, optim, schedule,
runtime); flat names (``lr``, ``epochs``) work too.
"""

from __future__ import annotations

import argparse

from spikeformers.engine import TrainConfig, Trainer, load_checkpoint


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=50)
    ap.add_argument("--out", default="runs/api_example")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model-kwargs", default=None, help='JSON, e.g. \'{"embed_dim": 64}\'')
    a = ap.parse_args(argv)
    import json
    cfg = TrainConfig.from_dict({
        "model": {"name": "a2os2a_fmnist", "kwargs": json.loads(a.model_kwargs) if a.model_kwargs else {}},
        "data": {"name": "fashion-mnist", "dir": a.data_dir, "batch_size": 64},
        "optim": {"lr": 3e-3},
        "schedule": {"epochs": a.epochs, "max_steps": a.max_steps},
        "runtime": {"out": a.out, "seed": 0},
    })
    trainer = Trainer(cfg)
    metrics = trainer.fit()                # setup -> resume -> wrap -> (train_epoch -> evaluate -> save) per epoch
    print(f"test accuracy {metrics['test_acc']:.2f} % after {metrics['step']} steps; checkpoints in {cfg.out}/")
    model, meta = load_checkpoint(f"{cfg.out}/best.safetensors")
    print(f"reloaded {meta['model']} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return metrics


if __name__ == "__main__":
    main()
