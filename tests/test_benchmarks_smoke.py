"""The benchmark scripts run and print figures (no timing is asserted, ever)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_cli_prints_figures_and_valid_json(tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    env_dir = tmp_path / "scratch"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_cli.py"), "--jobs", "50", "--reps", "2",
         "--warmup", "0", "--skip-torch", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TRAINSUP_BENCH_DIR": str(env_dir)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    written = json.loads(out.read_text())
    assert printed == written
    assert written["jobs_in_store"] == 50
    for command in ("python -c pass", "trainsup status", "trainsup status --json",
                    "trainsup status JOB --json", "trainsup submit --json"):
        figure = written["commands"][command]
        assert figure["n"] == 2
        assert figure["median"] > 0
    assert written["ratios"]["trainsup status / python -c pass"] > 0
    assert not list(env_dir.iterdir()), "the benchmark left scratch files behind"


def test_run_table_renders_a_cli_result() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import run
    finally:
        sys.path.pop(0)
    figure = {
        "jobs_in_store": 3, "ratios": {}, "commands": {
            name: {"median": 1.0} for name in ("python -c pass", "trainsup status", "trainsup status --json",
                                               "trainsup status JOB --json", "trainsup submit --json")},
    }
    text = run.table({"cli": figure, "hang": {"error": "not run"}})
    assert text.startswith("| figure |")
    assert "trainsup status" in text and "not run" in text


def test_bench_gpu_checkpoint_runs_on_cpu_and_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "gpu-checkpoint.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_gpu_checkpoint.py"), "--device", "cpu",
         "--sizes", "1MB", "--repeats", "1", "--dir", str(tmp_path), "--json", str(out), "--budget-s", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    figures = report["sizes"]["1MB"]
    assert figures["repeats"] == 1
    for row in ("torch.save", "torch.save+fsync", "power-safe", "async stall", "async durable",
                "dcp save", "dcp async stall", "dcp async durable"):
        assert isinstance(figures["rows"][row], float), (row, figures["rows"][row])
    assert figures["rows"]["dcp async stall (pinned)"].startswith("n/a")
    loop = figures["loop"]
    assert loop["baseline step"] > 0
    for part in ("trainsup async", "trainsup blocking", "dcp async"):
        assert "error" not in loop[part], loop[part]
    assert loop["trainsup async"]["stall step"] > 0 and loop["dcp async"]["durable after"] > 0
    assert report["dcp"]["sync_files"] is True and report["dcp"]["error"] is None
    assert "dcp async stall" in result.stdout and "loop: baseline step" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "the benchmark left scratch files behind"


def test_bench_checkpoint_reports_every_row_and_the_save_in_the_loop(tmp_path: Path) -> None:
    out = tmp_path / "checkpoint.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_checkpoint.py"), "--sizes", "1MB", "--repeats", "1",
         "--dir", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())["sizes"]["1MB"]
    for row in ("disk floor", "torch.save", "torch.save+fsync", "power-safe", "loop step", "save in the loop",
                "async stall", "async durable", "kept: async stall", "kept: async durable"):
        assert figures[row] > 0, row
    assert isinstance(figures["async loop loss"], float)  # a difference of two timings: noise may make it negative
    assert "durable/in loop" in result.stdout and "durable/kept" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "the benchmark left scratch files behind"
