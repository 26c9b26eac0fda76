"""The multi-GPU Ray benchmark (``benchmarks/ray_gpu_scaling``) end to end at toy size: CPU actors stand for GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server]'")

from benchmarks import ray_gpu_scaling  # noqa: E402

pytestmark = pytest.mark.slow


def test_toy_run_scales_out_survives_a_killed_worker_and_loses_no_request(tmp_path: Path) -> None:
    results = ray_gpu_scaling.main([
        "--toy", "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"), "--records", "6",
        "--tokens", "300", "--kill-records", "6", "--serve-requests", "6", "--serve-tokens", "200",
        "--serve-concurrency", "2",
    ])

    assert json.loads((tmp_path / "out" / "ray_gpu_scaling.json").read_text(encoding="utf-8")) == results
    batch = results["batch"]
    runs = [(run["units"], run["records"], run["errors"], run["blocks"]) for run in batch["runs"]]
    assert runs == [(1, 6, 0, 3), (2, 6, 0, 3)]
    assert all(run["context_tokens"] > 6 * 250 for run in batch["runs"])
    assert batch["identical_results"] == 6
    kill = results["kill"]
    assert kill["killed_pid"] is not None
    assert (kill["exactly_once_in_order"], kill["missing"], kill["duplicated"]) == (True, 0, 0)
    assert kill["run"]["errors"] == 0
    assert kill["identical_to_uninterrupted"] == 6
    serve = results["serve"]
    served = [(run["replicas"], run["sent"], run["answered"], run["lost"]) for run in serve["runs"]]
    assert served == [(1, 6, 6, 0), (2, 6, 6, 0)]
    assert all(run["p95_s"] >= run["p50_s"] > 0 for run in serve["runs"])
