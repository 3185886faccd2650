"""Every benchmark figure in one run, as a markdown table and JSON.

    python benchmarks/run.py [--quick] [--json PATH] [--only NAME,...]

NAMEs: cli, restart, first_step, overhead, checkpoint, resume, goodput, hang (in that order, the
order they run). `--quick` shrinks repetitions and sizes (about 3 minutes on 2 idle
cores; the full run about 12). Each figure compares trainsup with what a user would
use instead, measured in the same run on the same machine: medians of several runs,
and ratios of medians. The JSON (default benchmarks/results/latest.json) holds every
number, the machine, and how long each figure took. See docs/benchmarks.md.

Set TRAINSUP_BENCH_DIR to a folder on the disk you train on: scratch files (state
dirs, checkpoints, the fsync floor) go there, else to the system temp dir.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

ORDER = ["cli", "restart", "first_step", "overhead", "checkpoint", "resume", "goodput", "hang"]
MODULES = {"cli": "bench_cli", "restart": "bench_restart", "first_step": "bench_first_step",
           "overhead": "bench_daemon_overhead",
           "resume": "bench_resume", "goodput": "bench_goodput", "hang": "bench_hang"}


def checkpoint_figure(quick: bool) -> dict[str, Any]:
    """Figure 3: benchmarks/bench_checkpoint.py (its own script, run as a subprocess) + the disk floor.

    Interface expected of bench_checkpoint.py: `--sizes 10MB,100MB[,1GB] --repeats N
    --dir PATH --json PATH`; the JSON holds {"sizes": {label: {"torch.save": s,
    "torch.save+fsync": s, "power-safe": s, "save in the loop": s, "async stall": s, "async durable": s,
    "async loop loss": s, "kept: async stall": s, "kept: async durable": s, "kept: async loop loss": s}}}
    (kept: the same background saves with OpenMP's idle workers kept, TRAINSUP_OPENMP_RELEASE=0).
    """
    from trainsup.units import parse_size

    sizes = ["10MB", "100MB"] if quick else ["10MB", "100MB", "1GB"]
    repeats = 3 if quick else 5
    result: dict[str, Any] = {"figure": "checkpoint", "unit": "s",
                              "title": f"Checkpoint save, seconds (median of {repeats}) and the disk's fsync floor"}
    with common.workdir("checkpoint") as tmp:
        result["disk_floor"] = {size: common.fsync_bandwidth(tmp, parse_size(size), reps=repeats) for size in sizes}
        script = HERE / "bench_checkpoint.py"
        if not script.exists():
            result["saves"] = {"error": "benchmarks/bench_checkpoint.py is not there yet"}
            return result
        out = tmp / "checkpoint.json"
        argv = [common.PYTHON, str(script), "--sizes", ",".join(sizes), "--repeats", str(repeats),
                "--dir", str(tmp), "--json", str(out)]
        process = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if process.returncode != 0 or not out.exists():
            result["saves"] = {"error": f"bench_checkpoint.py exited {process.returncode}: {process.stderr[-600:]}"}
            return result
        report = json.loads(out.read_text())
    result["saves"] = report.get("sizes", {})
    result["bench_checkpoint"] = {k: v for k, v in report.items() if k != "sizes"}
    ratios = {}
    for size, figures in result["saves"].items():
        if not isinstance(figures, dict):
            continue
        if figures.get("disk floor"):  # interleaved with the saves and writing their own bytes: the fair floor
            seconds = figures["disk floor"]
            result["disk_floor"][size] = {**result["disk_floor"].get(size, {}), "write_fsync_s": seconds,
                                          "mb_per_s": figures.get("state bytes", 0) / 1e6 / seconds,
                                          "source": "bench_checkpoint.py: the torch.save file's bytes"}
        floor = result["disk_floor"].get(size, {}).get("write_fsync_s")
        ratios[size] = {
            "power-safe / torch.save+fsync": common.ratio(figures.get("power-safe"), figures.get("torch.save+fsync")),
            "power-safe / disk floor": common.ratio(figures.get("power-safe"), floor),
            "async stall / power-safe": common.ratio(figures.get("async stall"), figures.get("power-safe")),
            "async durable / power-safe": common.ratio(figures.get("async durable"), figures.get("power-safe")),
            "async loop loss / power-safe": common.ratio(figures.get("async loop loss"), figures.get("power-safe")),
            "async stall / save in the loop": common.ratio(figures.get("async stall"), figures.get("save in the loop")),
            "async durable / save in the loop": common.ratio(figures.get("async durable"),
                                                             figures.get("save in the loop")),
            "async durable / workers kept": common.ratio(figures.get("async durable"), figures.get("kept: async durable")),
            "async loop loss / workers kept": common.ratio(figures.get("async loop loss"),
                                                           figures.get("kept: async loop loss")),
        }
    result["ratios"] = ratios
    return result


def figure_runner(name: str) -> Callable[[bool], dict[str, Any]]:
    if name == "checkpoint":
        return checkpoint_figure
    module = importlib.import_module(MODULES[name])
    return lambda quick: module.run(quick=quick)


# --- the table ---------------------------------------------------------------------

def _f(value: Any, digits: int = 0, unit: str = "", signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:{'+' if signed else ''},.{digits}f}{unit}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _x(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}×"


def rows(name: str, fig: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, measure, trainsup, alternative, ratio) rows for one figure's result."""
    if "error" in fig:
        return [(name, "error", fig["error"][:120], "", "")]
    out = []
    if name == "cli":
        c = fig["commands"]
        floor = c["python -c pass"]["median"]
        torch_ms = c.get("python -c 'import torch'", {}).get("median")
        alt = f"python -c pass {_f(floor, 0, ' ms')}; import torch {_f(torch_ms, 0, ' ms')}"
        for cmd in ("trainsup status", "trainsup status --json", "trainsup status JOB --json", "trainsup submit --json"):
            out.append((f"CLI ({fig['jobs_in_store']} jobs)", cmd, _f(c[cmd]["median"], 0, " ms"), alt,
                        f"{_x(fig['ratios'][cmd + ' / python -c pass'])} pass, "
                        f"{_x(fig['ratios'].get(cmd + ' / import torch'))} torch"))
    elif name == "restart":
        s = fig["supervisors"]
        ts, tr, sh = s.get("trainsup", {}), s.get("torchrun", {}), s.get("shell loop", {})
        fresh = s.get("trainsup (no standby)", {})
        out.append(("Restart latency", "death → next first line (standby)",
                    _f(ts.get("median"), 0, " ms") if "error" not in ts else ts["error"][:60],
                    f"torchrun {_f(tr.get('median'), 0, ' ms') if 'error' not in tr else tr['error'][:60]}; "
                    f"shell loop {_f(sh.get('median'), 0, ' ms')}",
                    f"{_x(fig['ratios'].get('trainsup / torchrun'))} torchrun, "
                    f"loop {_f(fig['ratios'].get('trainsup − shell loop (ms)'), 0, ' ms', signed=True)}"))
        out.append(("", "same, `standby: false`", _f(fresh.get("median"), 0, " ms") if "error" not in fresh
                    else fresh["error"][:60], "", f"{_x(fig['ratios'].get('trainsup (no standby) / shell loop'))} loop"))
        for who, b in fig.get("trainsup_breakdown", {}).items():
            if isinstance(b, dict):
                split = ", ".join(f"{k} {_f(b[k]['median'], 0)}" for k in ("detect", "decide", "spawn") if k in b)
                out.append(("", f"{who} split (ms)", split, "", ""))
    elif name == "first_step":
        s = fig["supervisors"]
        ours, fresh = s.get("trainsup (standby)", {}), s.get("trainsup (no standby)", {})
        tr, sh = s.get("torchrun", {}), s.get("shell loop", {})

        def ms(entry: dict[str, Any]) -> str:
            return entry["error"][:60] if "error" in entry else _f(entry.get("median"), 0, " ms")

        out.append(("Death → first training step", f"example job, {fig['kills']} SIGKILLs, standby", ms(ours),
                    f"no standby {ms(fresh)}; torchrun {ms(tr)}; shell loop {ms(sh)}",
                    f"{_x(fig['ratios'].get('standby / torchrun'))} torchrun, "
                    f"{_x(fig['ratios'].get('standby / no standby'))} no standby"))
        if "standby_rss_mib" in ours:
            out.append(("", "standby's cost while it waits",
                        f"{_f(ours['standby_rss_mib'], 0, ' MiB')} RSS, {_f(ours.get('standby_cpu_s'), 1, ' s')} CPU",
                        f"used for {ours.get('standby_used')} of {ours.get('restarts')} restarts", ""))
    elif name == "overhead":
        t = fig.get("totals")
        ts = fig.get("trainsup", {})
        if t:
            out.append((f"Overhead ({fig['jobs']} jobs, {fig['heartbeat_rate']:g} beats/s)", "CPU, % of a core",
                        f"{_f(t['trainsup_cpu_percent'], 1, '%')} (daemon {_f(ts['daemon']['cpu_percent'], 1)}, "
                        f"monitors {_f(ts['monitors']['cpu_percent'], 1)})",
                        f"{fig['jobs']} torchrun agents {_f(t['torchrun_cpu_percent'], 1, '%')}",
                        _x(t["cpu_ratio_trainsup_over_torchrun"])))
            out.append(("", "RSS", f"{_f(t['trainsup_rss_mib'], 0, ' MiB')} (daemon {_f(ts['daemon']['rss_mib'], 0)}, "
                        f"monitors {_f(ts['monitors']['rss_mib'], 0)})",
                        f"{_f(t['torchrun_rss_mib'], 0, ' MiB')}", _x(t["rss_ratio_trainsup_over_torchrun"])))
        else:
            out.append(("Overhead", "error", str(ts.get("error") or fig.get("torchrun", {}).get("error")), "", ""))
    elif name == "checkpoint":
        saves = fig.get("saves", {})
        for size, floor in fig.get("disk_floor", {}).items():
            s = saves.get(size, {}) if isinstance(saves, dict) else {}
            r = fig.get("ratios", {}).get(size, {})
            if not s or "error" in saves:
                out.append((f"Checkpoint {size}", "disk floor (write+fsync)", "",
                            f"{_f(floor['write_fsync_s'], 3, ' s')} ({_f(floor['mb_per_s'], 0)} MB/s)",
                            saves.get("error", "")[:60] if isinstance(saves, dict) else ""))
                continue
            out.append((f"Checkpoint {size}", "power-safe save",
                        _f(s.get("power-safe"), 3, " s"),
                        f"torch.save {_f(s.get('torch.save'), 3)}; +fsync {_f(s.get('torch.save+fsync'), 3)}; "
                        f"disk floor {_f(floor['write_fsync_s'], 3)} ({_f(floor['mb_per_s'], 0)} MB/s)",
                        f"{_x(r.get('power-safe / torch.save+fsync'))} save+fsync, {_x(r.get('power-safe / disk floor'))} floor"))
            out.append(("", "async save (training on the same cores)",
                        f"stalls {_f(_ms(s.get('async stall')), 2, ' ms')}; durable after {_f(s.get('async durable'), 3, ' s')}; "
                        f"loop loss {_f(s.get('async loop loss'), 3, ' s')}",
                        f"power-safe save {_f(s.get('power-safe'), 3, ' s')}; the same in the loop "
                        f"{_f(s.get('save in the loop'), 3, ' s')}",
                        f"stall {_x(r.get('async stall / power-safe'))}, durable {_x(r.get('async durable / power-safe'))}, "
                        f"loss {_x(r.get('async loop loss / power-safe'))}; in the loop: stall "
                        f"{_x(r.get('async stall / save in the loop'))}, durable "
                        f"{_x(r.get('async durable / save in the loop'))}"))
            out.append(("", "async save: OpenMP's idle workers let go (the default), against kept",
                        "as above",
                        f"kept (TRAINSUP_OPENMP_RELEASE=0): stalls {_f(_ms(s.get('kept: async stall')), 2, ' ms')}; "
                        f"durable after {_f(s.get('kept: async durable'), 3, ' s')}; "
                        f"loop loss {_f(s.get('kept: async loop loss'), 3, ' s')}",
                        f"durable {_x(r.get('async durable / workers kept'))}, "
                        f"loss {_x(r.get('async loop loss / workers kept'))}"))
    elif name == "resume":
        r = fig["runs"]
        out.append(("Resume", f"start → first step ({fig['script'].split('/')[1]})", _f(r["resume"]["median"], 0, " ms"),
                    f"fresh start {_f(r['fresh']['median'], 0, ' ms')}", _x(fig["ratios"]["resume / fresh"])))
        out.append(("", "same, after import torch", _f(r["resume, after import torch"]["median"], 0, " ms"),
                    f"fresh {_f(r['fresh, after import torch']['median'], 0, ' ms')}",
                    f"resume costs {_f(fig['resume_cost_ms'], 0, ' ms')}"))
    elif name == "goodput":
        g = fig["goodput_steps_per_s"]
        out.append(("Goodput under SIGKILL", f"{fig['steps']} steps, {fig['chaos']['kills']} kills",
                    f"{_f(g['chaos'], 2, ' steps/s')} ({_f(fig['chaos']['wall_s'], 1, ' s')})",
                    f"uninterrupted {_f(g['uninterrupted'], 2, ' steps/s')} ({_f(fig['uninterrupted']['wall_s'], 1, ' s')})",
                    _x(fig["goodput_ratio"])))
        exact = fig["bit_exact"]
        diffs = fig.get("differences", [])
        real = [d for d in diffs if not d.startswith(("/rng/python", "/rng/numpy"))]
        note = ", ".join(real[:3]) if real else ("only the unseeded python/numpy RNGs differ" if diffs else "")
        out.append(("", "final checkpoint bit-identical",
                    "yes" if exact is True else ("NO" if exact is False else str(exact)),
                    f"{fig['tensors_compared']} tensors compared", note))
        out += importlib.import_module("bench_goodput").rows(fig)
    elif name == "hang":
        for case, c in fig["cases"].items():
            if not c.get("available"):
                out.append(("Hang detection", case, "not available", c.get("why", "")[:60], ""))
                continue
            out.append(("Hang detection" if not out else "", f"{case}: last beat → kill",
                        _f(c["silence_to_kill"]["median"], 0, " ms"), "torchrun / loop: never",
                        f"lag {_f(c['lag_past_timeout']['median'], 0, ' ms')} past timeout"))
    return out


def table(figures: dict[str, dict[str, Any]]) -> str:
    lines = ["| figure | measure | trainsup | alternative (same run) | ratio |", "|---|---|---|---|---|"]
    for name in ORDER:
        if name in figures:
            try:
                for row in rows(name, figures[name]):
                    lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
            except Exception as exc:  # a figure's odd shape must not lose the others
                lines.append(f"| {name} | table error | {type(exc).__name__}: {exc} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run trainsup's benchmarks and print a table.")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes (~3 min)")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"), help="where to write the JSON")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ORDER)}")
    args = parser.parse_args(argv)
    names = ORDER if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    started = time.time()
    report: dict[str, Any] = {"quick": args.quick, "started_at": started, "machine": common.machine(),
                              "figures": {}, "durations_s": {}}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            report["figures"][name] = figure_runner(name)(args.quick)
        except Exception as exc:
            report["figures"][name] = {"figure": name, "error": f"{type(exc).__name__}: {exc}",
                                       "traceback": traceback.format_exc()[-2000:]}
        report["durations_s"][name] = time.perf_counter() - t0
        print(f"  {name}: {report['durations_s'][name]:.0f} s", file=sys.stderr, flush=True)
    report["total_s"] = time.time() - started
    report["machine"]["load_avg_1m_end"] = common.machine().get("load_avg_1m")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    m = report["machine"]
    print(f"trainsup benchmarks{' (--quick)' if args.quick else ''}: {m['cpus']} CPUs, Python {m['python']}, "
          f"torch {m.get('torch')}, load {m.get('load_avg_1m', 0):.1f}→{m.get('load_avg_1m_end') or 0:.1f}, "
          f"{report['total_s']:.0f} s\n")
    print(table(report["figures"]))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
