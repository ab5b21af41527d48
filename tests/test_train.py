"""Checkpoints (atomic, validated) and the training engine (smoke run, resume, NaN, CLI)."""

import json
import time

import pytest
import torch
from click.testing import CliRunner

import spikeformers as sf
from spikeformers.engine import checkpoint as ck
from spikeformers.cli import main
from spikeformers.data import fashion_mnist as fm
from spikeformers.engine.config import TrainConfig
from spikeformers.engine.trainer import fit
from spikeformers.errors import TrainingError


TINY = {"embed_dim": 16, "num_heads": 2, "depth": 1}


def test_checkpoint_roundtrip_and_sidecar(tmp_path):
    m = sf.create_model("a2os2a_fmnist", **TINY)
    ck.save_checkpoint(tmp_path / "m.safetensors", m, epoch=3, metrics={"acc": 1.0})
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["model"] == "a2os2a_fmnist" and meta["epoch"] == 3 and meta["config"]["embed_dim"] == 16
    m2, meta2 = ck.load_checkpoint(tmp_path / "m.safetensors")
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_checkpoint_errors(tmp_path):
    m = sf.create_model("a2os2a_fmnist", **TINY)
    p = ck.save_checkpoint(tmp_path / "m.safetensors", m)
    with pytest.raises(ck.CheckpointError, match="holds model 'a2os2a_fmnist', expected 'sdt_2_512_cifar'"):
        ck.load_checkpoint(p, expect_model="sdt_2_512_cifar")
    other = sf.create_model("a2os2a_fmnist", embed_dim=32, num_heads=2, depth=1)
    with pytest.raises(ck.CheckpointError, match="shape mismatches"):
        ck.load_weights(other, ck.read_checkpoint(p)[0])
    sdt = sf.create_model("sdt_2_512_cifar", **TINY)
    with pytest.raises(ck.CheckpointError, match="missing keys"):
        ck.load_weights(sdt, {k: v for k, v in ck.read_checkpoint(p)[0].items() if "head" not in k})
    data = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="truncated or corrupt"):
        ck.load_checkpoint(tmp_path / "trunc.safetensors")
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope.safetensors")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(tmp):
        open(tmp, "wb").write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ck.atomic_write(target, boom)
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def _cfg(fake, out, **kw):
    base = dict(data_dir=str(fake), epochs=2, batch_size=64, max_steps=None, out=str(out),
                model_kwargs=dict(TINY), T=1, warmup_epochs=0.0)
    base.update(kw)
    return TrainConfig.from_dict(base)


def _die_at_evaluation(monkeypatch, n):
    """Make the n-th call of ``train.evaluate`` raise KeyboardInterrupt (the process killed there);
    returns the real ``evaluate`` for the caller to put back."""
    import spikeformers.engine.trainer as tr
    real_evaluate, calls = tr.evaluate, []

    def killed(model, loader, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_evaluate(model, loader, **kw)

    monkeypatch.setattr(tr, "evaluate", killed)
    return real_evaluate


def test_fit_smoke_and_resume(fake_fmnist, tmp_path, monkeypatch):
    # 2 epochs of 3 steps each: shrink the data so a run takes seconds.
    import spikeformers.engine.trainer as tr
    real_load = fm.load_fashion_mnist

    def small(split, data_dir=None):
        x, y = real_load(split, data_dir)
        return x[:192], y[:192]

    monkeypatch.setattr(fm, "load_fashion_mnist", small)
    out = tmp_path / "run"
    full = fit(_cfg(fake_fmnist, tmp_path / "full"), progress=False)
    real_evaluate = _die_at_evaluation(monkeypatch, 2)   # the process dies during epoch 2's evaluation
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(fake_fmnist, out), progress=False)
    monkeypatch.setattr(tr, "evaluate", real_evaluate)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    for f in ("last.safetensors", "last.json", "best.safetensors", "last.state.pt"):
        assert (out / f).is_file()
    first = json.loads(lines[0])
    resumed = fit(_cfg(fake_fmnist, out, resume=True), progress=False)
    assert resumed["epoch"] == 2 and resumed["step"] == 6
    # the run's elapsed time goes on from the killed process's, it does not restart at 0
    assert resumed["elapsed_s"] >= first["elapsed_s"] + resumed["epoch_time_s"]
    assert resumed["earlier_processes_s"] == first["elapsed_s"]   # what the killed process logged at its epoch end
    # a resumed run ends with the same weights as an uninterrupted one
    a, _ = ck.read_checkpoint(tmp_path / "full" / "last.safetensors")
    b, _ = ck.read_checkpoint(out / "last.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(TrainingError, match="batch_size=64, this run asks for batch_size=32"):
        fit(_cfg(fake_fmnist, out, resume=True, batch_size=32), progress=False)


def test_init_from_starts_from_the_checkpoint_weights(fake_fmnist, tmp_path, monkeypatch):
    real_load = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:128] for t in real_load(s, d)))
    torch.manual_seed(123)  # weights no seed_everything(0) model has
    src = sf.create_model("a2os2a_fmnist", **TINY, T=1)
    p = ck.save_checkpoint(tmp_path / "src.safetensors", src)
    # with a zero learning rate the parameters must stay exactly the checkpoint's
    fit(_cfg(fake_fmnist, tmp_path / "a", epochs=1, lr=0.0, min_lr=0.0, init_from=str(p)), progress=False)
    got, _ = ck.read_checkpoint(tmp_path / "a" / "last.safetensors")
    params = [k for k, _ in src.named_parameters()]
    assert all(torch.equal(got[k], src.state_dict()[k]) for k in params)
    fit(_cfg(fake_fmnist, tmp_path / "b", epochs=1, lr=0.0, min_lr=0.0), progress=False)
    fresh, _ = ck.read_checkpoint(tmp_path / "b" / "last.safetensors")
    assert not all(torch.equal(fresh[k], src.state_dict()[k]) for k in params)
    other = ck.save_checkpoint(tmp_path / "sdt.safetensors", sf.create_model("sdt_2_512_cifar", **TINY))
    with pytest.raises(TrainingError, match="holds model 'sdt_2_512_cifar', this run trains 'a2os2a_fmnist'"):
        fit(_cfg(fake_fmnist, tmp_path / "c", init_from=str(other)), progress=False)


def test_nan_loss_is_reported(fake_fmnist, tmp_path, monkeypatch):
    import spikeformers.engine.trainer as tr
    real_load = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:128] for t in real_load(s, d)))
    real_create = tr.create_model

    def poisoned(name, **kw):  # a diverged model: its classifier bias holds a NaN
        m = real_create(name, **kw)
        with torch.no_grad():
            m.head.bias[0] = float("nan")
        return m

    monkeypatch.setattr(tr, "create_model", poisoned)
    with pytest.raises(TrainingError, match="loss is nan at step 0"):
        fit(_cfg(fake_fmnist, tmp_path, max_steps=1), progress=False)


def test_cli_models_train_eval(fake_fmnist, tmp_path, monkeypatch):
    real_load = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:128] for t in real_load(s, d)))
    r = CliRunner().invoke(main, ["models", "a2os2a_*"])
    assert r.exit_code == 0 and "a2os2a_fmnist" in r.output and "params=" in r.output
    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["train", "--data-dir", str(fake_fmnist), "--epochs", "1", "--batch-size", "64",
                                  "--T", "1", "--out", str(out), "--model-kwargs", json.dumps(TINY)])
    assert r.exit_code == 0, r.output
    assert "best test accuracy" in r.output
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(out / "best.safetensors"), "--data-dir", str(fake_fmnist),
                                  "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 128
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(out / "best.safetensors"), "--data-dir", str(fake_fmnist),
                                  "--tta-flip", "--json", str(tmp_path / "t.json")])
    assert r.exit_code == 0 and "flip TTA" in r.output, r.output
    assert json.loads((tmp_path / "t.json").read_text())["tta_flip"] is True
    from spikeformers.accel import int8_available
    if int8_available():   # the int8 inference path: runs, says so, reports the same number of images
        r = CliRunner().invoke(main, ["eval", "--checkpoint", str(out / "best.safetensors"), "--data-dir",
                                      str(fake_fmnist), "--int8", "--json", str(tmp_path / "q.json")])
        assert r.exit_code == 0 and "int8 products" in r.output, r.output
        q = json.loads((tmp_path / "q.json").read_text())
        assert q["int8"] is True and q["n"] == 128 and 0.0 <= q["acc"] <= 100.0
    import spikeformers.accel as sp
    monkeypatch.setattr(sp, "int8_available", lambda: False)
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(out / "best.safetensors"), "--int8"])
    assert r.exit_code != 0 and "oneDNN's int8 operators" in r.output
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(tmp_path / "missing.safetensors")])
    assert r.exit_code != 0 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["train", "--model", "nope", "--data-dir", str(fake_fmnist)])
    assert r.exit_code != 0 and "unknown model 'nope'" in r.output


def test_precision_auto_follows_native_bf16(monkeypatch):
    from spikeformers.engine.config import TrainConfig
    from spikeformers.engine.hardware import resolve_precision

    cpu = torch.device("cpu")
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert resolve_precision("auto", cpu) == "fp32"           # emulated bf16 would be slower
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_precision("auto", cpu) == "bf16"
    # AVX512-BF16 without AMX: the matmul probe decides (bf16 must beat fp32 by 10 %)
    import spikeformers.engine.hardware as hw
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    for bf16, fp32, want in ((380.0, 150.0, "bf16"), (152.0, 239.0, "fp32"), (105.0, 100.0, "fp32")):
        monkeypatch.setattr(hw, "_BF16_PROBE", {})
        monkeypatch.setattr(hw, "matmul_peak", lambda dtype, n=0, reps=0, b=bf16, f=fp32:
                            b if dtype == torch.bfloat16 else f)
        assert resolve_precision("auto", cpu) == want, (bf16, fp32)
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert TrainConfig().runtime.precision == "auto"
    with pytest.raises(ValueError, match="precision must be 'auto', 'fp32' or 'bf16'"):
        TrainConfig.from_dict(precision="fp16").check()


def test_evaluate_flip_tta_averages_mirrored_logits():
    """tta_flip scores each image by the mean of its logits and its mirror's: a model that only
    sees the left half of the image, fed images whose class is written in one half."""
    from spikeformers.engine.evaluate import evaluate

    class LeftHalf(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):                 # logit k = mean of column block k of the left half
            left = x[..., : x.shape[-1] // 2]
            return torch.stack([left[..., :2].mean((1, 2, 3)), left[..., 2:].mean((1, 2, 3))], -1)

    x = torch.zeros(4, 1, 2, 8)
    x[0, ..., 0:2] = 1.0    # class 0 seen directly
    x[1, ..., 6:8] = 1.0    # class 0 only after mirroring: logits (0, 0) -> (0.5, 0) with TTA
    x[2, ..., 2:4] = 1.0    # class 1 seen directly
    x[3, ..., 4:6] = 1.0    # class 1 only after mirroring
    y = torch.tensor([0, 0, 1, 1])
    plain = evaluate(LeftHalf(), [(x, y)], progress=False)
    tta = evaluate(LeftHalf(), [(x, y)], progress=False, tta_flip=True)
    assert plain["acc"] == 75.0     # image 3 scores (0, 0): argmax picks class 0, wrong
    assert tta["acc"] == 100.0


def test_ema_run_keeps_ema_weights_and_resumes(fake_fmnist, tmp_path, monkeypatch):
    import spikeformers.engine.trainer as tr
    real_load = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:192] for t in real_load(s, d)))
    full = tmp_path / "full"
    m = fit(_cfg(fake_fmnist, full, ema=0.9), progress=False)
    assert {"test_acc_raw", "test_loss_raw", "best_test_acc_raw"} <= set(m)
    ema_w, ema_meta = ck.read_checkpoint(full / "ema.safetensors")
    raw_w, _ = ck.read_checkpoint(full / "last.safetensors")
    assert ema_meta["ema_decay"] == 0.9
    assert any(not torch.equal(ema_w[k], raw_w[k]) for k in raw_w)   # the average is not the last weights
    # the reported test accuracy is the EMA weights' own (independently re-evaluated)
    model, _ = ck.load_checkpoint(full / "ema.safetensors")
    _, test, _ = tr.data_loaders(_cfg(fake_fmnist, full))
    assert tr.evaluate(model, test, progress=False)["acc"] == pytest.approx(m["test_acc"])

    # killed during epoch 2's first evaluation, then resumed: the same EMA as the uninterrupted run
    out = tmp_path / "run"
    real_evaluate = _die_at_evaluation(monkeypatch, 3)   # two evaluations (trained, EMA) per epoch
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(fake_fmnist, out, ema=0.9), progress=False)
    monkeypatch.setattr(tr, "evaluate", real_evaluate)
    fit(_cfg(fake_fmnist, out, ema=0.9, resume=True), progress=False)
    b, _ = ck.read_checkpoint(out / "ema.safetensors")
    for k in ema_w:
        torch.testing.assert_close(ema_w[k].float(), b[k].float(), rtol=1e-5, atol=1e-6)
    with pytest.raises(TrainingError, match="ema=0.9, this run asks for ema=0.0"):
        fit(_cfg(fake_fmnist, out, resume=True), progress=False)
    with pytest.raises(ValueError, match="ema must be a decay in"):
        fit(_cfg(fake_fmnist, tmp_path / "bad", ema=2.0), progress=False)


def test_cli_train_ema_flag(fake_fmnist, tmp_path, monkeypatch):
    real_load = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:128] for t in real_load(s, d)))
    out = tmp_path / "cli_ema"
    r = CliRunner().invoke(main, ["train", "--data-dir", str(fake_fmnist), "--epochs", "1", "--T", "1", "--ema", "0.9",
                                  "--out", str(out), "--model-kwargs", json.dumps(TINY)])
    assert r.exit_code == 0, r.output
    assert "EMA weights; the trained weights' best" in r.output
    assert "over all processes" not in r.output   # one process: no total beside its wall time
    assert json.loads((out / "config.json").read_text())["optim"]["ema"] == 0.9 and (out / "ema.safetensors").is_file()


def test_cli_train_resumed_reports_the_time_over_all_processes(fake_fmnist, tmp_path, monkeypatch):
    import spikeformers.engine.trainer as tr
    real_load = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:128] for t in real_load(s, d)))
    _die_at_evaluation(monkeypatch, 2)   # killed in epoch 2; the resumed process passes the count
    args = ["train", "--data-dir", str(fake_fmnist), "--epochs", "2", "--T", "1", "--out", str(tmp_path / "r"),
            "--model-kwargs", json.dumps(TINY)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code != 0 and (tmp_path / "r" / "last.state.pt").is_file()   # click reports "Aborted!"
    earlier = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])["elapsed_s"]
    # the resumed process spends longer after its last epoch's end than the killed one ran in all: the old check
    # (elapsed_s at the last epoch's end > this process's wall time) then missed the resume, as it did in CI
    real_save = tr.save_train_state
    monkeypatch.setattr(tr, "save_train_state", lambda *a, **k: (time.sleep(earlier + 0.3), real_save(*a, **k)))
    r = CliRunner().invoke(main, args + ["--resume"])
    assert r.exit_code == 0, r.output
    assert "over all processes of the run" in r.output


def test_ema_raw_every_tests_the_trained_weights_on_those_epochs_and_the_last(fake_fmnist, tmp_path, monkeypatch):
    real_load = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:128] for t in real_load(s, d)))
    out = tmp_path / "every"
    fit(_cfg(fake_fmnist, out, epochs=5, ema=0.9, ema_raw_every=2), progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("test_acc_raw" in r) for r in rows] == [False, True, False, True, True]
    assert all("test_acc" in r for r in rows)
    with pytest.raises(ValueError, match="ema_raw_every must be >= 1"):
        fit(_cfg(fake_fmnist, tmp_path / "bad", ema=0.9, ema_raw_every=0), progress=False)
