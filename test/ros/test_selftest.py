"""``run_node_selftest``, as ``affordance-demo`` and ``bench/bench_node.py`` start it: node and
client in their own processes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]


def test_selftest_without_log_dir_reports_and_leaves_no_folder(
    tiny_model_files: tuple[Path, Path],
    msg_prefix: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from affordance_ros.selftest import run_node_selftest

    checkpoint, weights = tiny_model_files
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    summary = run_node_selftest(
        checkpoint, seconds=3.0, msg_prefix=msg_prefix, weights_dir=weights
    )
    assert summary["frames_sent"] > 0
    assert summary["received"]["heatmap"] > 0
    assert list(tmp_path.iterdir()) == []  # the temporary ROS_LOG_DIR is gone


def test_selftest_keeps_a_given_log_dir(
    tiny_model_files: tuple[Path, Path], msg_prefix: Path, tmp_path: Path
) -> None:
    from affordance_ros.selftest import run_node_selftest

    checkpoint, weights = tiny_model_files
    logs = tmp_path / "ros_logs"
    run_node_selftest(
        checkpoint, seconds=1.0, msg_prefix=msg_prefix, weights_dir=weights, log_dir=logs
    )
    assert "affordance_node" in (logs / "node.log").read_text()
