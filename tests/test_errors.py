"""Bad input as a user meets it: one clear line on the command line, our own error types in Python,
and a traceback only for what is a bug."""

import argparse
import os

import pytest
import torch
from click.testing import CliRunner

import spikeformers as sf
from spikeformers.cli import main
from spikeformers.errors import CheckpointError, ConfigError, InputError, SpikeformersError
from spikeformers.models.official import load_official_state_dict

TINY = {"embed_dim": 16, "num_heads": 2, "depth": 1}


def test_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path):
    bad = tmp_path / "recipe.yaml"
    bad.write_text("optim:\n  lr: 0.001\n  weight_decay: 0.1: 2\n")   # the second ':' is at column 20
    r = CliRunner().invoke(main, ["train", "--config", str(bad)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    msg = [line for line in r.output.splitlines() if line.strip()]
    assert len(msg) == 1 and "recipe.yaml, line 3, column 20" in msg[0] and "not valid YAML" in msg[0], r.output


def test_unknown_recipe_option_names_the_section(tmp_path):
    bad = tmp_path / "recipe.yaml"
    bad.write_text("optim:\n  lr: 0.001\n  epochs: 3\n")
    r = CliRunner().invoke(main, ["train", "--config", str(bad)])
    assert r.exit_code == 1 and "'epochs'" in r.output and "'optim'" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_refused(value):
    m = sf.create_model("a2os2a_fmnist", **TINY).eval()
    x = torch.randn(2, 1, 28, 28)
    x[1, 0, 3, 4] = value
    with pytest.raises(InputError, match="1 NaN or infinite value"):
        m(x)
    assert torch.isfinite(m(torch.randn(2, 1, 28, 28))).all()


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoint_holding_code_is_refused_with_our_message(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match=r"asks for posix\.getcwd.*run code.*A valid file holds a state dict") as e:
        load_official_state_dict(path)
    assert "weights_only" not in str(e.value)
    # the argparse.Namespace that official training scripts keep beside the weights is plain data
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    assert torch.equal(load_official_state_dict(path)["w"], torch.ones(2))


def test_our_errors_are_one_line_other_errors_keep_their_traceback(monkeypatch):
    r = CliRunner().invoke(main, ["models", "nothing_like_this*"])
    assert r.exit_code == 1 and "ConfigError" in r.output and r.exception.__class__ is SystemExit

    import spikeformers.models as models

    def bug(pattern=None):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(models, "list_models", bug)
    r = CliRunner().invoke(main, ["models"])
    assert isinstance(r.exception, ValueError) and not isinstance(r.exception, SpikeformersError)


def test_error_types_keep_the_builtin_ones():
    assert issubclass(ConfigError, ValueError) and issubclass(InputError, TypeError)
    with pytest.raises(KeyError):
        sf.create_model("no_such_model")
    try:
        sf.create_model("a2os2a_fmnx")
    except KeyError as e:
        assert str(e).startswith("unknown model 'a2os2a_fmnx'; did you mean a2os2a_fmnist")
