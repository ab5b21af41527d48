"""Run logs: metrics.jsonl, the optional TensorBoard writer, `spikeformers plot RUN_DIR` and the
curves.png that `train` draws."""

import importlib.util
import json
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from spikeformers.analysis.plots import plot_run, read_metrics
from spikeformers.cli import main
from spikeformers.engine.config import TrainConfig
from spikeformers.engine.trainer import Trainer, fit
from spikeformers.errors import ConfigError, InputError, UnsupportedError

from test_firing import small_fmnist  # noqa: F401  (fixture)

TINY = {"embed_dim": 16, "num_heads": 2, "depth": 1}
needs_tb = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                              reason="tensorboard is not installed (the `tensorboard` extra)")


def _cfg(data, out, **kw):
    return TrainConfig.from_dict({"data_dir": str(data), "epochs": 2, "batch_size": 32, "out": str(out),
                                  "model_kwargs": dict(TINY), "T": 1, "warmup_epochs": 0.0, **kw})


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _write_run(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_command_draws_a_runs_curves(tmp_path):
    recs = [{"epoch": e, "train_loss": 2 / e, "test_loss": 2.1 / e, "train_acc": 50 + e, "test_acc": 49 + e,
             "lr": 1e-3 / e, "firing_rate": 0.1 * e, "firing_rates": {"a": 0.1, "b": 0.2}} for e in (1, 2, 3)]
    _write_run(tmp_path / "run", recs)
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert _png_size(tmp_path / "run" / "curves.png") == (1040, 760)    # 2 x 2 panels of 5.2 x 3.6 in, 100 dpi
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "run"), "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 0 and (tmp_path / "x.png").is_file()
    # a run without firing rates: three panels
    _write_run(tmp_path / "old", [{k: v for k, v in r.items() if not k.startswith("firing")} for r in recs])
    assert _png_size(plot_run(tmp_path / "old")) == (1040, 760)
    _write_run(tmp_path / "lr_only", [{"epoch": 1, "lr": 0.1}])
    assert _png_size(plot_run(tmp_path / "lr_only")) == (520, 400)


def test_metrics_reader_keeps_the_last_record_of_a_repeated_epoch_and_names_bad_lines(tmp_path):
    _write_run(tmp_path / "r", [{"epoch": 1, "test_acc": 10}, {"epoch": 2, "test_acc": 20},
                                {"epoch": 2, "test_acc": 25}])     # epoch 2 again: a resumed run
    assert [r["test_acc"] for r in read_metrics(tmp_path / "r")] == [10, 25]
    (tmp_path / "r" / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(InputError, match="line 2: not valid JSON"):
        read_metrics(tmp_path / "r")
    res = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert res.exit_code != 0 and "metrics.jsonl does not exist" in res.output


def test_train_draws_its_curves_at_the_end(tmp_path, small_fmnist, one_thread):
    fit(_cfg(small_fmnist, tmp_path / "run"), progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and _png_size(tmp_path / "run" / "curves.png") == (1040, 760)
    fit(_cfg(small_fmnist, tmp_path / "quiet", epochs=1, plot=False, firing_rates=False), progress=False)
    assert not (tmp_path / "quiet" / "curves.png").exists()


def test_log_option_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="log must be 'jsonl' or 'tensorboard'"):
        Trainer(_cfg(tmp_path, tmp_path, log="wandb"))
    res = CliRunner().invoke(main, ["train", "--log", "csv"])
    assert res.exit_code != 0 and "'csv' is not one of 'jsonl', 'tensorboard'" in res.output


def test_tensorboard_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if not installed
    with pytest.raises(UnsupportedError, match=r"spikeformers\[tensorboard\]"):
        Trainer(_cfg(tmp_path, tmp_path / "tb", log="tensorboard"))
    res = CliRunner().invoke(main, ["train", "--log", "tensorboard", "--out", str(tmp_path / "tb")])
    assert res.exit_code != 0 and "spikeformers[tensorboard]" in res.output
    assert not (tmp_path / "tb").exists()                                # failed before any work


@needs_tb
def test_train_log_tensorboard_writes_the_metrics_as_scalars(tmp_path, small_fmnist, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    res = CliRunner().invoke(main, ["train", "--data-dir", str(small_fmnist), "--epochs", "2", "--batch-size", "32",
                                    "--T", "1", "--warmup-epochs", "0", "--model-kwargs", json.dumps(TINY),
                                    "--out", str(tmp_path / "run"), "--log", "tensorboard", "--threads", "1"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ev = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    ev.Reload()
    tags = ev.Tags()["scalars"]
    for key in ("train_loss", "test_acc", "lr", "firing_rate"):
        got = [(s.step, s.value) for s in ev.Scalars(key)]
        assert got == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in recs], key
    layer = next(iter(recs[-1]["firing_rates"]))
    assert f"firing_rates/{layer}" in tags
    assert "TensorBoard" in res.output and "curves.png" in res.output
