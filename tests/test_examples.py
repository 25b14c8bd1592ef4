"""The runnable examples run (quickly) and do what they say."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          env=ENV, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_minimal_sample(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    stdout = run("minimal_sample.py", "--out", str(out), "--steps", "4", "--per-class", "1")
    assert out.is_file() and "10 digits, 7 network evaluations each" in stdout


@pytest.mark.slow
def test_tmsa_in_your_model(tmp_path: Path) -> None:
    stdout = run("tmsa_in_your_model.py", "--steps", "4", "--out", str(tmp_path / "run"))
    assert "trained 2 steps, resumed to 4" in stdout and "sampled (10, 16, 16, 1) uint8 images" in stdout


@pytest.mark.slow
def test_custom_objective(tmp_path: Path) -> None:
    stdout = run("custom_objective.py", "--steps", "3", "--out", str(tmp_path / "flow"))
    assert "completed at step 3; sampled (10, 16, 16, 1)" in stdout


@pytest.mark.slow
def test_train_digits_resumes(tmp_path: Path) -> None:
    common = ("--batch-size", "8", "--out", str(tmp_path / "run"), "--precision", "fp32")
    run("train_digits.py", "--steps", "2", *common)
    stdout = run("train_digits.py", "--steps", "4", "--resume", *common)
    assert "completed at step 4" in stdout
    assert (tmp_path / "run" / "samples-00000004.png").is_file()
