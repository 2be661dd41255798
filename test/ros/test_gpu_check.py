"""bench/gpu_check.sh on a machine without a GPU: CUDA stages skip cleanly; with --force-cpu
its stages run on the CPU (plumbing check: each ends with its JSON line)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ros_helpers import REPO

pytestmark = pytest.mark.timeout(1500)


def run_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    # The CPU plumbing run is not held to the GPU run's 8 minutes (a loaded 2-core machine).
    env = {**os.environ, "PY": sys.executable, "GPU_CHECK_BUDGET_S": "1200"}
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "bench" / "gpu_check.sh"),
            "--quick",
            "--out",
            str(tmp_path / "out"),
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_every_stage_is_skipped(tmp_path: Path) -> None:
    _, report = run_check(tmp_path)
    assert report["cuda"] is False and report["peak_gpu_memory_mib"] is None
    assert set(report["stages"]) == {"tests", "train", "infer_tiny", "infer_paper", "node"}
    for name, stage in report["stages"].items():
        assert "no CUDA device" in stage["skipped"], name


@pytest.mark.slow
@pytest.mark.ros
def test_force_cpu_runs_the_stages(tmp_path: Path, msg_prefix: Path) -> None:
    proc, report = run_check(tmp_path, "--force-cpu")
    stages = report["stages"]
    assert report["device"] == "cpu"
    for name in ("tests", "train", "infer_tiny", "node"):
        assert stages[name].get("rc") == 0, f"{name}: {stages[name]}\n{proc.stdout}"
    assert "skipped" in stages["infer_paper"]
    assert re.search(r"3 (skipped|passed)", stages["tests"]["summary"])  # test_cuda.py
    assert stages["train"]["result"]["step"] == 3
    backends = stages["infer_tiny"]["result"]["backends"]
    assert backends["torch"]["ratio_to_eager"] == 1.0
    assert backends["onnxruntime"]["max_heatmap_diff"] <= 1e-3
    assert stages["node"]["result"]["heatmaps"] > 0
