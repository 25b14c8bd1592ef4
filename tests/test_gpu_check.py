"""benchmarks/gpu_check.py cannot rot: its CPU quick run takes the same code paths as the GPU check on tiny
shapes, and writes a record with every part, environment field and table the GPU run fills in."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
PARTS = ["correctness", "attention", "train_step_eager", "train_step_compiled", "train_step_compiled_blocks",
         "sampling", "train_cli", "teardown"]  # fmt: skip


@pytest.mark.slow  # ~1 min on two idle cores: six part processes, four `diffit train` runs, one via torchrun
def test_gpu_check_quick_cpu_run_writes_a_complete_record(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 0, json.dumps(record["parts"], indent=1)[-4000:]
    env = record["environment"]
    assert {"device", "card", "torch", "cuda", "bf16_dense_peak_flops"} <= set(env) and env["device"] == "cpu"
    assert list(record["parts"]) == PARTS and record["quick"] is True
    assert all(part["status"] == "ok" and part["result"]["failures"] == [] for part in record["parts"].values())
    res = {name: part["result"] for name, part in record["parts"].items()}
    assert [r["model"] for r in res["correctness"]["rows"]] == ["diffit_tiny", "diffit_cifar10", "latent_diffit_s_2"]
    for r in res["correctness"]["rows"]:  # CPU against itself, and both against a float64 reference
        assert r["fp32_grad_rel_max"] == 0 and r["fp32_less_accurate_than_cpu"] == []
        assert 0 < r["worst_grad_vs_fp64"]["device"] == r["worst_grad_vs_fp64"]["cpu"] < 1e-4
    attention = {r["case"]: r for r in res["attention"]["rows"]}
    assert set(attention) == {"windowed", "global"}
    for r in attention.values():
        assert r["sdpa_kernels"]["forward"] and r["sdpa_kernels"]["backward"]
        assert r["flex_vs_sdpa_fwd_rel"] < 1e-5 and r["sdpa_fwd_vs_flash"] > 0 and r["flex_fwd_ms"] > 0
        assert r["timing"] == "host clock"  # CUDA events on a GPU
    for name in ("train_step_eager", "train_step_compiled", "train_step_compiled_blocks"):
        assert res[name]["batch"] >= 1 and res[name]["images_per_s"] > 0 and res[name]["model_flops_per_image"] > 0
    assert (
        res["train_step_compiled"]["batch"]
        == res["train_step_compiled_blocks"]["batch"]
        == res["train_step_eager"]["batch"]
    )
    assert [res[n]["compiled"] for n in PARTS[2:5]] == [False, True, "blocks"]
    assert "| compiled blocks |" in (tmp_path / "gpu_check.md").read_text()
    assert "Timing: host clock, each sample about 0.0 s of calls." in (tmp_path / "gpu_check.md").read_text()
    assert [r["images_per_s"] > 0 for r in res["sampling"]["rows"]] == [True, True]
    runs = res["train_cli"]["rows"]
    assert len(runs) == 4 and all(r["exit"] == 0 for r in runs)
    diffit_exits = res["teardown"]["rows"][0]
    assert (diffit_exits["collectives"], diffit_exits["runs"], diffit_exits["nonzero_exits"]) == ("diffit", 1, 0)
    table = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## 1. Correctness", "## 2. Attention", "## 3. Training step", "## 4. Sampling", "## 5.",
                    "## 6."):  # fmt: skip
        assert heading in table


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cuda", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "CUDA is not available" in proc.stderr


def test_gpu_check_names_a_missing_dependency_in_one_line(tmp_path: Path) -> None:
    """Run with a GPU machine's own Python, which may lack webdataset (say): one line and exit 2, not a traceback."""
    code = (
        "import runpy, sys; sys.modules['webdataset'] = None; sys.path.insert(0, sys.argv[1]); "
        "sys.argv = [sys.argv[2], '--device', 'cuda', '--out', sys.argv[3]]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(SCRIPT.parent), str(SCRIPT), str(tmp_path)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: import of webdataset halted") and "PYTHONPATH=DIR" in proc.stderr
