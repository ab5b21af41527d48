"""The Triton (GPU) neuron kernels checked without a GPU: ``tests/_triton_interpreter_cases.py`` runs
them under Triton's CPU interpreter in a subprocess (``TRITON_INTERPRET=1`` must be set before Triton
is first imported). Skipped where Triton is not installed; ``make test-triton`` runs it in a
virtualenv of its own (the Triton wheel is ~1 GB)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("_triton_interpreter_cases.py")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_kernels_under_the_cpu_interpreter():
    # the interpreter runs on the CPU; a visible GPU is hidden so that nothing in the cases picks it
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
