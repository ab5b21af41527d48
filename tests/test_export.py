"""`spikeformers export`: ONNX files run in onnxruntime, torch.export programs, clear errors.

Each exported file is loaded and run here, on a batch of another size than the one exported (the
batch axis is dynamic), and its logits are compared with the PyTorch model's own. The ONNX
round trips of the five families take 5-20 s each on a 2-core CPU: they are marked slow
(`pytest -m slow tests/test_export.py`)."""

from __future__ import annotations

import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from spikeformers import create_model
from spikeformers.analysis.energy import calibrate_batchnorm
from spikeformers.analysis.export import export
from spikeformers.cli import main
from spikeformers.errors import ConfigError, UnsupportedError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# one tiny model of each family (T > 1: the unrolled time loop is exercised)
FAMILIES = {
    "spikformer_2_384_cifar": dict(embed_dim=32, num_heads=2, depths=1, T=2, img_size=16),
    "sdt_2_256_cifar": dict(embed_dim=32, num_heads=2, depth=1, T=2, img_size=16),
    "qkformer_4_384_cifar": dict(embed_dim=32, num_heads=2, T=2, img_size=16),
    "spikingresformer_ti_cifar": dict(planes=(16, 32, 64), num_heads=(1, 2, 2), depths=(1, 1, 1), group_size=16,
                                      T=2, img_size=16),
    "a2os2a_fmnist": dict(embed_dim=32, T=2),
}


def live(name: str, **kw) -> nn.Module:
    """The model with BatchNorm statistics set on random images, so that its neurons fire."""
    torch.manual_seed(0)
    m = create_model(name, **kw)
    calibrate_batchnorm(m, torch.randn(8, m.in_chans, m.img_size, m.img_size))
    return m.eval()


def reference(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = m(x)
    # a meaningful comparison: the logits differ between images (neurons fired)
    assert (y - y[:1]).abs().max() > 1e-3
    return y


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_onnx_logits_match_pytorch_in_onnxruntime(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    m = live(name, **FAMILIES[name])
    path = tmp_path / f"{name}.onnx"
    export(m, path, "onnx", check=False)
    graph = onnx.load(str(path)).graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value                 # a named, dynamic batch axis
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}               # standard operators only
    x = torch.randn(5, m.in_chans, m.img_size, m.img_size)                # exported with a batch of 2
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), reference(m, x), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_cli_onnx_frames_input_for_an_event_model(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "g.onnx"
    r = CliRunner().invoke(main, ["export", "--model", "sdt_2_256_gesture", "--out", str(out), "--threads", "1",
                                  "--model-kwargs", '{"embed_dim": 16, "num_heads": 2, "depth": 1, "T": 2, '
                                                    '"img_size": 16}'])
    assert r.exit_code == 0, r.output
    assert "input [batch,2,2,16,16]" in r.output and "max |logit difference|" in r.output
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [d if isinstance(d, int) else "batch" for d in sess.get_inputs()[0].shape] == ["batch", 2, 2, 16, 16]


def test_pt2_program_matches_pytorch_at_another_batch_size(tmp_path):
    m = live("a2os2a_fmnist", embed_dim=16, T=1)
    r = export(m, tmp_path / "m.pt2", "pt2", check=False)
    assert r.input_shape == ["batch", 1, 28, 28] and r.max_abs_diff is None
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        got = torch.export.load(str(tmp_path / "m.pt2")).module()(x)
    torch.testing.assert_close(got, reference(m, x), atol=1e-4, rtol=0)
    assert not list(tmp_path.glob("*.tmp*"))                             # written atomically


def test_cli_pt2_from_a_checkpoint(tmp_path):
    from spikeformers.engine.checkpoint import save_checkpoint
    ck = save_checkpoint(tmp_path / "m.safetensors", live("a2os2a_fmnist", embed_dim=16, T=1))
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(ck), "--format", "pt2", "--out",
                                  str(tmp_path / "m.pt2"), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert f"weights: {ck}" in r.output and "pt2" in r.output and "checked on a batch of 3" in r.output


class _Base(nn.Module):
    in_chans, img_size, T = 1, 4, 1


class NoOnnxOperator(_Base):
    def forward(self, x):
        return x.flatten(1).cummax(1).values       # aten.cummax has no ONNX translation


class BranchOnValues(_Base):
    def forward(self, x):
        return x.flatten(1) if x.sum() > 0 else -x.flatten(1)


def test_an_operator_without_an_onnx_form_is_a_clear_error(tmp_path):
    pytest.importorskip("onnxscript")
    with pytest.raises(UnsupportedError, match=r"cannot export NoOnnxOperator to ONNX.*aten\.cummax"):
        export(NoOnnxOperator(), tmp_path / "x.onnx", check=False)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(UnsupportedError, match="torch.export could not capture its graph"):
        export(BranchOnValues(), tmp_path / "y.pt2", "pt2")


def test_usage_errors(tmp_path, monkeypatch):
    m = create_model("a2os2a_fmnist", embed_dim=16, T=1)
    with pytest.raises(ConfigError, match="unknown export format"):
        export(m, tmp_path / "m.x", "tflite")
    with pytest.raises(ConfigError, match="needs a spikeformers model"):
        export(nn.Linear(2, 2), tmp_path / "m.pt2", "pt2")
    monkeypatch.setitem(sys.modules, "onnx", None)      # as if the extra were not installed
    with pytest.raises(UnsupportedError, match=r"spikeformers\[export\]"):
        export(m, tmp_path / "m.onnx")
