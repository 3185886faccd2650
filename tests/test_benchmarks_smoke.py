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
