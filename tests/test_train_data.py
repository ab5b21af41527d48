"""The engine on the real-format datasets: data check, configs, TET, accumulation, bf16, torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from spikeformers import list_models
from spikeformers.cli import main
from spikeformers.engine.config import TrainConfig
from spikeformers.engine.schedule import lr_schedule
from test_data_readers import make_cifar10, make_gesture

REPO = Path(__file__).resolve().parents[1]
TINY = '{"embed_dim": 32, "num_heads": 2}'


@pytest.fixture
def cifar_dir(tmp_path):
    make_cifar10(tmp_path, np.random.default_rng(0), n=8)  # 40 train / 8 test images
    return tmp_path


def test_data_check_prints_counts_classes_shape(cifar_dir, tmp_path):
    r = CliRunner().invoke(main, ["data", "check", "--data", "cifar10", "--data-dir", str(cifar_dir)])
    assert r.exit_code == 0, r.output
    assert "40 train / 8 test" in r.output and "airplane" in r.output and "[3, 32, 32]" in r.output
    g = tmp_path / "g"
    g.mkdir()
    make_gesture(g, np.random.default_rng(1))
    r = CliRunner().invoke(main, ["data", "check", "--data", "dvs128-gesture", "--data-dir", str(g), "--T", "4"])
    assert r.exit_code == 0, r.output
    assert "4 train / 2 test" in r.output and "[4, 2, 128, 128]" in r.output
    r = CliRunner().invoke(main, ["data", "check", "--data", "cifar10-dvs", "--data-dir", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "airplane/cifar10_airplane_0.aedat" in r.output


def test_every_config_is_a_valid_training_config():
    from spikeformers.data.randaugment import parse_randaugment

    files = sorted((REPO / "configs").glob("*.yaml"))
    assert len(files) >= 20
    for f in files:
        d = yaml.safe_load(f.read_text())
        assert f.read_text().startswith("# "), f   # what the recipe is and where it comes from
        assert set(d) <= {"model", "data", "augment", "optim", "schedule", "runtime"}, f   # nested by section
        cfg = TrainConfig.from_dict(d)  # unknown keys raise
        assert cfg.model.name in list_models(), (f, cfg.model.name)
        if cfg.augment.randaugment:
            parse_randaugment(cfg.augment.randaugment)
        assert cfg.optim.optimizer in ("adamw", "lamb") and cfg.schedule.epochs > cfg.schedule.warmup_epochs
    assert yaml.safe_load((REPO / "configs/sdt_imagenet.yaml").read_text())["optim"]["optimizer"] == "lamb"


def test_schedule_warmup_cosine_cooldown():
    cfg = TrainConfig.from_dict(lr=1.0, min_lr=0.0, warmup_lr=0.1, warmup_epochs=2, epochs=12, cooldown_epochs=2,
                                sched_per="epoch")
    spe = 10
    lrs = [lr_schedule(cfg.schedule, cfg.optim.lr, e * spe, spe, 12 * spe) for e in range(12)]
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.55)
    # after warm-up: timm cosine over t_initial = 10 epochs from epoch 0, then min_lr for the cooldown
    assert lrs[5] == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)))
    assert lrs[10] == pytest.approx(0.0) and lrs[11] == pytest.approx(0.0)
    assert lr_schedule(cfg.schedule, cfg.optim.lr, 5 * spe + 7, spe, 120) == lrs[5]  # constant within an epoch


def test_train_cifar_from_config_with_overrides(cifar_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(dict(model="a2os2a_fmnist", data="cifar10", epochs=5, batch_size=4, lr=1e-3,
                                       optimizer="lamb", randaugment="rand-m9-n1-mstd0.4-inc1", mixup=0.5,
                                       cutmix=1.0, random_erasing=0.25, workers=0, T=2)))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--data-dir", str(cifar_dir), "--out", str(out),
                                  "--max-steps", "3", "--precision", "bf16", "--accum-steps", "2",
                                  "--model-kwargs", TINY, "--set", "label_smoothing=0.2"])
    assert r.exit_code == 0, r.output
    saved = TrainConfig.from_dict(json.loads((out / "config.json").read_text())).flat()
    assert saved["optimizer"] == "lamb" and saved["label_smoothing"] == 0.2 and saved["accum_steps"] == 2
    assert saved["precision"] == "bf16" and saved["T"] == 2
    log = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and np.isfinite(log[-1]["train_loss"])
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--set", "nonsense=1", "--data-dir", str(cifar_dir)])
    assert r.exit_code != 0 and "nonsense" in r.output


def test_train_tet_on_gesture(tmp_path):
    make_gesture(tmp_path, np.random.default_rng(2))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", "dvs128-gesture", "--data-dir", str(tmp_path), "--model",
                                  "sdt_2_512_cifar", "--model-kwargs", '{"embed_dim": 16, "num_heads": 2, "depth": 1}',
                                  "--T", "2", "--batch-size", "2", "--max-steps", "1", "--tet", "--workers", "0",
                                  "--out", str(out), "--set", "img_size=32", "--set", "in_chans=2",
                                  "--set", "event_aug=flip+wide"])
    assert r.exit_code == 0, r.output
    log = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert log["step"] == 1 and np.isfinite(log["test_loss"])


def _run(args, env_extra, cwd):
    # CPU processes (gloo): on a machine with one GPU, NCCL would put both ranks on the same device
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **env_extra}
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def test_two_processes_equal_one_process_with_accumulation(cifar_dir, tmp_path):
    """2 gloo processes x batch B == 1 process reading the same 2B images as 2 micro-batches of B.

    (With BatchNorm in training mode the batch statistics depend on how the 2B images are grouped,
    and torch has no CPU SyncBatchNorm, so the exact single-process equivalent of DDP over 2 x B
    is gradient accumulation over the same two groups of B, not one batch of 2B.)"""
    from safetensors.torch import load_file

    common = ["-m", "spikeformers", "train", "--data", "cifar10", "--data-dir", str(cifar_dir), "--model",
              "a2os2a_fmnist", "--model-kwargs", TINY, "--T", "2", "--batch-size", "4", "--max-steps", "1",
              "--workers", "0", "--warmup-epochs", "0", "--lr", "0.01", "--set", "crop=none", "--set", "hflip=0",
              "--threads", "1", "--precision", "fp32"]   # fixed: "auto" may time a probe per process
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    _run(torchrun + common + ["--out", str(ddp)], {}, tmp_path)
    _run([sys.executable] + common + ["--out", str(one), "--accum-steps", "2"], {}, tmp_path)
    a, b = load_file(str(ddp / "last.safetensors")), load_file(str(one / "last.safetensors"))
    assert a.keys() == b.keys()
    # parameters must agree; BN running statistics legitimately differ (DDP keeps rank 0's, the
    # single process updated them from both micro-batches)
    params = [k for k in a if a[k].is_floating_point() and "running_" not in k]
    assert len(params) > 10
    for k in params:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # and the step did change the weights (not a vacuous comparison)
    _run([sys.executable] + common + ["--out", str(tmp_path / "zero"), "--lr", "0", "--accum-steps", "2"], {}, tmp_path)
    z = load_file(str(tmp_path / "zero" / "last.safetensors"))
    assert any(not torch.allclose(a[k], z[k], atol=1e-4) for k in params if a[k].ndim > 1)


def test_from_rank0_makes_two_processes_agree(tmp_path):
    """`distributed.from_rank0` (how `fit` shares rank 0's resolved precision): each of 2 gloo
    processes offers a different value and both must end with rank 0's."""
    script = tmp_path / "agree.py"
    script.write_text(
        "import os, sys\n"
        "from spikeformers.engine import distributed as d\n"
        "ctx = d.init_distributed()\n"
        "mine = 'bf16' if ctx.rank == 0 else 'fp32'\n"
        "got = d.from_rank0(ctx, mine)\n"
        "open(os.path.join(sys.argv[1], f'rank{ctx.rank}.txt'), 'w').write(f'{mine} {got}')\n"
        "d.cleanup(ctx)\n")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519"]
    _run(torchrun + [str(script), str(tmp_path)], {}, tmp_path)
    assert (tmp_path / "rank0.txt").read_text() == "bf16 bf16"
    assert (tmp_path / "rank1.txt").read_text() == "fp32 bf16"
