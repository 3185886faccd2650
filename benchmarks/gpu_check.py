"""Everything GPU-related in trainsup, run for real on a machine with one NVIDIA GPU.

    python benchmarks/gpu_check.py [--out DIR] [--sections probe,placement,oom,kills,checkpoint]

Sections (each prints its rows as it finishes; one failing section does not stop the rest):
  probe       `trainsup doctor` and the NVML probe: name, UUID, memory, a live process seen
  placement   the daemon with `gpus: 1` jobs: CUDA_VISIBLE_DEVICES holds the UUID, the peak
              GPU memory in `status`, a second exclusive job waits, two `min_free_memory`
              jobs share the GPU, an impossible request fails at once
  oom         a real CUDA OOM: the micro-batch shrinks, the global batch stays, the job
              finishes; NVML memory at each attempt's start; death -> next start
  kills       SIGKILL x5 of a deterministic GPU job (mid-step and mid-background-save):
              it resumes and its final weights are compared with an uninterrupted run;
              death -> first step, against a bare relaunch of the same script
  checkpoint  save / async save of a GPU-resident state vs torch.save+fsync and DCP
              (benchmarks/bench_gpu_checkpoint.py)
  standby     SIGKILL x3 of a GPU job with its warm standby and x3 with `standby: false`:
              the waiting standby holds no GPU memory, becomes the attempt on the granted
              GPU; death -> first step of each; steps lost per kill (in-memory snapshots);
              final weights vs an uninterrupted run

Writes DIR/gpu_check.json (all figures) and DIR/gpu_check.md (the table for docs/gpus.md).
The same file is also the job script the sections submit (`gpu_check.py job KIND ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

GIB = 2**30
PYTHON = sys.executable
# `--cpu-rehearsal` runs the kills section on the CPU (gpus: 0), to try the driver without a GPU
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
SELF = str(Path(__file__).resolve())


# =============================================================================
# The job scripts (run by the daemon as `python gpu_check.py job KIND ...`)
# =============================================================================

def _record(path: str, **fields: Any) -> None:
    """Append one JSON line to the job's record file (survives SIGKILL: one small write)."""
    fields.setdefault("pid", os.getpid())
    fields.setdefault("attempt", int(os.environ.get("TRAINSUP_ATTEMPT", "0")))
    with open(path, "a") as file:
        file.write(json.dumps(fields) + "\n")


def _nvml_used(uuid: str) -> dict[str, Any]:
    """NVML's view of one GPU, before this process touches CUDA."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return {"used": int(memory.used), "total": int(memory.total), "processes": [int(p.pid) for p in procs]}
    finally:
        pynvml.nvmlShutdown()


def job_hold(record: str, gib: float, seconds: float) -> None:
    """Hold `gib` GiB on the granted GPU for `seconds`, recording what it was given."""
    started = time.time()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    import torch

    tensor = torch.empty(int(gib * GIB), dtype=torch.uint8, device="cuda")
    tensor.fill_(1)
    torch.cuda.synchronize()
    _record(record, event="holding", started=started, visible=visible,
            device=torch.cuda.get_device_name(0), allocated=torch.cuda.memory_allocated())
    time.sleep(seconds)
    _record(record, event="done", ended=time.time(), max_allocated=torch.cuda.max_memory_allocated())


def job_oom(record: str, steps: int) -> None:
    """A real CUDA OOM at a big micro-batch: activations sized from the GPU's free memory.

    Per sample the activations kept for backward are about free/32 bytes, so micro 64 and
    32 do not fit and 16 does. The global batch (64) never changes.
    """
    started = time.time()
    uuid = os.environ["CUDA_VISIBLE_DEVICES"].split(",")[0]
    nvml = _nvml_used(uuid)
    import torch

    from trainsup import trainer

    torch.backends.cuda.matmul.allow_tf32 = True
    batch = trainer.Batch.from_env(micro=64, grad_accum=1)
    free, total = torch.cuda.mem_get_info()
    width, layers = 1024, 8
    saved_per_token = layers * 2 * width * 4  # each layer keeps its input and its GELU input (fp32)
    tokens = max(1, int(free / 32 / saved_per_token))
    _record(record, event="start", started=started, micro=batch.micro, grad_accum=batch.grad_accum,
            nvml_used_at_start=nvml["used"], nvml_processes_at_start=nvml["processes"], free=free, total=total,
            tokens=tokens)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(layers) for m in (torch.nn.Linear(width, width), torch.nn.GELU())]).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with trainer.Session(model, optimizer, batch=batch,
                         saving=trainer.Saving(every_steps=None, every_seconds=None)) as session:
        while session.step < steps:
            for _ in range(batch.grad_accum):
                x = torch.randn(batch.micro, tokens, width, device="cuda")
                loss = model(x).pow(2).mean() / batch.grad_accum
                loss.backward()
                del x, loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            session.step_done()
            _record(record, event="step", step=session.step, micro=batch.micro, at=time.time(),
                    peak=torch.cuda.max_memory_allocated())


def _deterministic() -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)  # a warning names any op that is not
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def job_train(record: str, out: str, steps: int, width: int, step_delay: float) -> None:
    """Deterministic GPU training on trainsup.trainer, saving in the background every 5 steps."""
    started = time.time()
    import torch

    _deterministic()
    from torch.utils.data import DataLoader, TensorDataset

    from trainsup import trainer

    torch.zeros(1, device=DEVICE)  # CUDA's initialization, timed on its own
    cuda_ready = time.time()
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(4096, width, generator=data), torch.randint(0, 10, (4096,), generator=data))
    model = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(4 * width, 4 * width), torch.nn.GELU(),
                                torch.nn.Linear(4 * width, 10)).to(DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.8)
    loader = DataLoader(dataset, batch_size=64, sampler=trainer.ResumableSampler(dataset, seed=3))
    first = True
    with trainer.Session(model, optimizer, scheduler,
                         saving=trainer.Saving(every_steps=5, every_seconds=None, in_background=True)) as session:
        _record(record, event="start", started=started, cuda_ready=cuda_ready, resumed_at=session.step)
        while session.step < steps:
            for _epoch in session.epochs(10**6):
                for step in session.steps(loader):
                    for x, y in step:
                        loss = torch.nn.functional.cross_entropy(model(x.to(DEVICE)), y.to(DEVICE))
                        loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    if DEVICE == "cuda":
                        torch.cuda.synchronize()
                    if first:
                        _record(record, event="first_step", at=time.time(), step=session.step + 1)
                        first = False
                    elif os.environ.get("GPU_CHECK_TRACE"):
                        _record(record, event="step", at=time.time(), step=session.step + 1)
                    if step_delay:
                        time.sleep(step_delay)
                    session.step_done(loss=loss.item())
                    if session.step >= steps:
                        break
                if session.step >= steps:
                    break
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": session.step}, out)
    _record(record, event="done", step=session.step)


def job_main(argv: list[str]) -> None:
    kind, record, *rest = argv
    if kind == "hold":
        job_hold(record, float(rest[0]), float(rest[1]))
    elif kind == "oom":
        job_oom(record, int(rest[0]))
    elif kind == "train":
        job_train(record, rest[0], int(rest[1]), int(rest[2]), float(rest[3]))
    else:
        raise SystemExit(f"unknown job kind {kind!r}")


# =============================================================================
# The checks (the driver)
# =============================================================================

def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


class Report:
    """Rows for the table, and every figure for the JSON."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[tuple[str, str, str]] = []
        self.figures: dict[str, Any] = {}
        self.blocks: list[str] = []  # preformatted tables, after the rows

    def row(self, section: str, what: str, result: str) -> None:
        self.rows.append((section, what, result))
        print(f"  [{section}] {what}: {result}", flush=True)
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps({"rows": self.rows, "figures": self.figures},
                                                            indent=2, default=str) + "\n")
        lines = ["| section | check | result |", "|---|---|---|"]
        lines += [f"| {s} | {w} | {r} |" for s, w, r in self.rows]
        lines += [f"\n```\n{block.rstrip()}\n```" for block in self.blocks]
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def machine(report: Report) -> None:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "device": torch.cuda.get_device_name(0),
            "capability": torch.cuda.get_device_capability(0)}
    report.figures["machine"] = info
    report.row("machine", "GPU and build", f"{info['device']}, torch {info['torch']} (CUDA {info['cuda']}), "
                                           f"Python {info['python']}")


def section_probe(report: Report, work: Path) -> None:
    from common import TRAINSUP

    env = {**os.environ, "TRAINSUP_HOME": str(work / "probe-home")}
    doctor = subprocess.run([*TRAINSUP, "doctor"], env=env, capture_output=True, text=True, timeout=60)
    nvml_line = next((line for line in doctor.stdout.splitlines() if " nvml " in f" {line} "), doctor.stdout[-300:])
    report.figures["doctor"] = doctor.stdout
    report.row("probe", "`trainsup doctor` nvml line", nvml_line.strip())

    from trainsup.gpu.nvml import NvmlProbe

    holder = subprocess.Popen([PYTHON, SELF, "job", "hold", str(work / "probe-hold.jsonl"), "2", "20"])
    try:
        wait_until(lambda: read_records(work / "probe-hold.jsonl"), 60, "the holder to allocate")
        probe = NvmlProbe()
        try:
            gpus, processes = probe.gpus(), probe.processes()
        finally:
            probe.close()
    finally:
        holder.kill()
        holder.wait()
    report.figures["nvml"] = {"gpus": [g._asdict() if hasattr(g, "_asdict") else vars(g) for g in gpus],
                              "processes": [p._asdict() if hasattr(p, "_asdict") else vars(p) for p in processes]}
    for gpu in gpus:
        report.row("probe", f"NVML GPU {gpu.index}", f"{gpu.name}, {gpu.uuid}, {mib(gpu.memory_total)} total, "
                                                    f"{mib(gpu.memory_used)} used")
    mine = [p for p in processes if p.pid == holder.pid]
    report.row("probe", "a process holding 2 GiB is listed by NVML",
               f"{'yes' if mine else 'NO'} (pid {holder.pid}: {mib(mine[0].used_memory) if mine else 'absent'}; "
               f"{len(processes)} compute processes seen)")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def section_placement(report: Report, work: Path) -> None:
    from common import Daemon, write_job

    from trainsup.gpu.nvml import NvmlProbe

    probe = NvmlProbe()
    uuid = probe.gpus()[0].uuid
    total = probe.gpus()[0].memory_total
    probe.close()
    jobs = work / "placement-jobs"
    with Daemon(work / "placement-home") as daemon:
        a_rec, b_rec = work / "a.jsonl", work / "b.jsonl"
        a = daemon.submit(write_job(jobs, "exclusive-a", [PYTHON, SELF, "job", "hold", str(a_rec), "20", "12"], gpus=1))
        wait_until(lambda: read_records(a_rec), 90, "job a to hold its memory")
        b = daemon.submit(write_job(jobs, "exclusive-b", [PYTHON, SELF, "job", "hold", str(b_rec), "1", "1"], gpus=1))
        time.sleep(3)
        b_waits = daemon.job_state(b)
        try:
            peak_seen = wait_until(lambda: daemon.status(a).get("peak_gpu_memory"), 8, "a peak in status")
        except TimeoutError:
            peak_seen = None
        status_line = daemon.cli("status").stdout
        daemon.wait_state(a, {"succeeded", "failed"}, 60)
        daemon.wait_state(b, {"succeeded", "failed"}, 90)
        a_hold, b_hold = read_records(a_rec)[0], read_records(b_rec)[0]
        a_done = read_records(a_rec)[-1]
        report.figures["placement_exclusive"] = {"a": read_records(a_rec), "b": read_records(b_rec),
                                                 "status": status_line, "b_state_while_a_ran": b_waits}
        report.row("placement", "CUDA_VISIBLE_DEVICES of a `gpus: 1` job",
                   f"{a_hold['visible']} ({'the UUID' if a_hold['visible'] == uuid else 'NOT the UUID ' + uuid}); "
                   f"torch sees {a_hold['device']}")
        report.row("placement", "peak GPU memory in `status` (job holds 20 GiB)",
                   f"{mib(peak_seen)} (torch max_memory_allocated {mib(a_done.get('max_allocated'))})")
        report.row("placement", "second exclusive job while the first holds the GPU",
                   f"{b_waits} while a ran; b started {b_hold['started'] - a_done['ended']:+.1f} s after a ended")

        c_rec, d_rec = work / "c.jsonl", work / "d.jsonl"
        share = f"{int(total * 0.35 / GIB)}GiB"
        hold = str(int(total * 0.25 / GIB))
        c = daemon.submit(write_job(jobs, "shared-c", [PYTHON, SELF, "job", "hold", str(c_rec), hold, "10"],
                                    gpus=1, min_free_memory=share))
        d = daemon.submit(write_job(jobs, "shared-d", [PYTHON, SELF, "job", "hold", str(d_rec), hold, "10"],
                                    gpus=1, min_free_memory=share))
        daemon.wait_state(c, {"succeeded", "failed"}, 120)
        daemon.wait_state(d, {"succeeded", "failed"}, 120)
        c_r, d_r = read_records(c_rec), read_records(d_rec)
        overlap = min(c_r[-1]["ended"], d_r[-1]["ended"]) - max(c_r[0]["started"], d_r[0]["started"]) if c_r and d_r else None
        report.figures["placement_shared"] = {"c": c_r, "d": d_r, "share": share, "hold_gib": hold}
        report.row("placement", f"two jobs with min_free_memory {share}, each holding {hold} GiB",
                   f"ran together for {overlap:.1f} s" if overlap and overlap > 0 else f"did NOT overlap ({overlap})")

        e = daemon.submit(write_job(jobs, "too-big", [PYTHON, "-c", "pass"], gpus=1, min_free_memory="100TiB"))
        state = daemon.wait_state(e, {"failed", "succeeded"}, 30)
        detail = daemon.status(e).get("result") or daemon.status(e).get("last_reason")
        report.row("placement", "min_free_memory 100TiB", f"{state}: {detail}")


def section_oom(report: Report, work: Path) -> None:
    from common import Daemon, write_job

    record = work / "oom.jsonl"
    with Daemon(work / "oom-home") as daemon:
        job = daemon.submit(write_job(work / "oom-jobs", "real-oom", [PYTHON, SELF, "job", "oom", str(record), "2"],
                                      gpus=1, batch_size={"global": 64, "micro": 64, "min_micro": 4},
                                      restart={"initial": "0.5s", "max_restarts": 5}))
        state = daemon.wait_state(job, {"succeeded", "failed"}, 240)
        attempts = daemon.attempts(job)
        events = [e["message"] for e in daemon.events(job)]
        log = daemon.cli("logs", job, check=False).stdout
    starts = [r for r in read_records(record) if r["event"] == "start"]
    steps = [r for r in read_records(record) if r["event"] == "step"]
    report.figures["oom"] = {"state": state, "attempts": attempts, "events": events, "records": read_records(record)}
    reasons = [f"#{a['number']} micro {json.loads(a['batch_json'])['micro'] if a['batch_json'] else '?'}: "
               f"{a['reason']}" for a in attempts]
    report.row("oom", "attempts (micro-batch: end)", "; ".join(reasons) + f" -> {state}")
    report.row("oom", "global batch each attempt",
               ", ".join(f"{s['micro']}x{s['grad_accum']}={s['micro'] * s['grad_accum']}" for s in starts))
    oom_line = next((line for line in log.splitlines() if "OutOfMemoryError" in line or "out of memory" in line), "")
    report.row("oom", "what the job died of", oom_line.strip()[:160] or "no OOM line in the log")
    if starts:
        baseline = starts[0]["nvml_used_at_start"]
        report.row("oom", "NVML used memory when each attempt started",
                   ", ".join(f"#{s['attempt']} {mib(s['nvml_used_at_start'])} (other procs {s['nvml_processes_at_start']})"
                             for s in starts) + f" — first attempt's baseline {mib(baseline)}")
    gaps = [b["started_at"] - a["ended_at"] for a, b in zip(attempts, attempts[1:]) if a["ended_at"]]
    report.row("oom", "death -> next attempt start (daemon; restart.initial 0.5 s)",
               ", ".join(f"{g:.2f} s" for g in gaps) or "-")
    if steps:
        report.row("oom", "peak CUDA memory of the attempt that fit", mib(max(s["peak"] for s in steps)))


def _reference_train(work: Path, steps: int, width: int) -> tuple[Path, dict[str, Any]]:
    out, record = work / "reference.pt", work / "reference.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSUP_")}
    env["TRAINSUP_CHECKPOINT_DIR"] = str(work / "reference-ckpt")
    started = time.time()
    subprocess.run([PYTHON, SELF, "job", "train", str(record), str(out), str(steps), str(width), "0"],
                   env=env, check=True, timeout=300, capture_output=True)
    records = read_records(record)
    start = next(r for r in records if r["event"] == "start")
    first = next(r for r in records if r["event"] == "first_step")
    return out, {"wall_s": time.time() - started, "process_to_first_step_s": first["at"] - start["started"],
                 "process_to_cuda_ready_s": start["cuda_ready"] - start["started"]}


def _step_of(name: str) -> int:
    """The step number in `step-000000010` or `.tmp-step-000000010-1a2b3c4d`."""
    digits = name.split("step-", 1)[1][:9]
    return int(digits) if digits.isdigit() else -1


def _newest_step(folder: Path) -> int:
    return max((_step_of(p.name) for p in folder.glob("step-*")), default=0)


def _kill_plan(seed: int, count: int) -> list[str]:
    rnd = random.Random(seed)
    plan = ["save" if i % 2 else "step" for i in range(count)]
    rnd.shuffle(plan)
    return plan


def section_kills(report: Report, work: Path, kills: int = 5, gpus: int = 1) -> None:
    import torch

    from common import Daemon, write_job

    steps, width, delay = 60, 1024, 0.05
    reference, bare = _reference_train(work, steps, width)
    record, out, ckpt = work / "kills.jsonl", work / "kills.pt", work / "kills-ckpt"
    plan = _kill_plan(7, kills)
    done: list[dict[str, Any]] = []
    with Daemon(work / "kills-home") as daemon:
        job = daemon.submit(write_job(work / "kills-jobs", "gpu-kills",
                                      [PYTHON, SELF, "job", "train", str(record), str(out), str(steps), str(width),
                                       str(delay)],
                                      gpus=gpus, checkpoint_dir=str(ckpt),
                                      restart={"initial": "0.2s", "max_restarts": kills + 2, "crash_loop": kills + 1}))
        rnd = random.Random(3)
        for where in plan:
            seen = len(read_records(record))
            wait_until(lambda: any(r["event"] == "first_step" for r in read_records(record)[seen:]), 120,
                       "the attempt's first step")
            resumed = next(r for r in read_records(record)[seen:] if r["event"] == "start")["resumed_at"]
            pid = wait_until(lambda: daemon.status(job).get("pid"), 30, "the job's pid")
            if not done:
                time.sleep(1.5)  # a heartbeat or two
                report.figures["kills_status_table"] = daemon.cli("status").stdout
                progress = daemon.status(job).get("progress") or {}
                report.row("kills", "heartbeat of the running GPU job (`status --json` progress)",
                           ", ".join(f"{k} {v}" for k, v in progress.items() if k in ("step", "loss", "max_memory_bytes", "phase")))
            # every attempt first makes progress (one save of its own), so no kill lands on a bare restart
            saved = wait_until(lambda: _newest_step(ckpt) > resumed and _newest_step(ckpt), 120, "a save of this attempt")
            if where == "save":
                temp = wait_until(lambda: next((p for p in ckpt.glob(".tmp-step-*") if _step_of(p.name) > saved), None),
                                  60, "the next save in flight")
                os.kill(pid, signal.SIGKILL)
                done.append({"where": "save", "at": time.time(), "temp": temp.name, "pid": pid})
            else:
                time.sleep(rnd.uniform(0.05, 0.6))
                os.kill(pid, signal.SIGKILL)
                done.append({"where": "step", "at": time.time(), "pid": pid})
            wait_until(lambda: daemon.status(job).get("pid") not in (None, pid) or
                       daemon.job_state(job) in ("succeeded", "failed"), 120, "the next attempt")
        state = daemon.wait_state(job, {"succeeded", "failed"}, 300)
        attempts = daemon.attempts(job)
    records = read_records(record)
    equal = None
    if out.exists():
        a, b = torch.load(reference, weights_only=True), torch.load(out, weights_only=True)
        equal = _same(a, b)
    first_steps = [r for r in records if r["event"] == "first_step"]
    starts = [r for r in records if r["event"] == "start"]
    recoveries = []
    for kill in done:
        nxt = next((f for f in first_steps if f["at"] > kill["at"]), None)
        start = next((s for s in starts if s["started"] > kill["at"]), None)
        if nxt and start:
            recoveries.append({"death_to_first_step_s": nxt["at"] - kill["at"],
                               "death_to_process_start_s": start["started"] - kill["at"],
                               "process_to_cuda_ready_s": start["cuda_ready"] - start["started"],
                               "process_to_first_step_s": nxt["at"] - start["started"],
                               "resumed_at": start["resumed_at"]})
    report.figures["kills"] = {"plan": done, "state": state, "attempts": attempts, "records": records,
                               "recoveries": recoveries, "bare": bare, "equal": equal}
    report.row("kills", f"{len(done)} SIGKILLs ({', '.join(k['where'] for k in done)})",
               f"{state} after {len(attempts)} attempts; resumed at steps "
               f"{[s['resumed_at'] for s in starts]}")
    report.row("kills", "final weights and optimizer vs an uninterrupted run (deterministic flags)",
               "torch.equal: all equal" if equal is True else f"DIFFER: {equal}")
    if recoveries:
        med = sorted(r["death_to_first_step_s"] for r in recoveries)[len(recoveries) // 2]
        spawn = sorted(r["death_to_process_start_s"] for r in recoveries)[len(recoveries) // 2]
        inner = sorted(r["process_to_first_step_s"] for r in recoveries)[len(recoveries) // 2]
        cuda = sorted(r["process_to_cuda_ready_s"] for r in recoveries)[len(recoveries) // 2]
        report.row("kills", "death -> first step under trainsup (median)",
                   f"{med:.2f} s = {spawn:.2f} s to the new process (restart.initial 0.2 s) + {inner:.2f} s "
                   f"start to first step ({cuda:.2f} s of it import + CUDA init)")
        report.row("kills", "the same script started bare (no trainsup), start -> first step",
                   f"{bare['process_to_first_step_s']:.2f} s ({bare['process_to_cuda_ready_s']:.2f} s import + CUDA init)")


def _same(a: Any, b: Any, where: str = "state") -> bool | str:
    import torch

    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            return f"{where} is not a tensor"
        if a.device != b.device:
            return f"{where} is on {b.device}, not {a.device} as in the uninterrupted run"
        return True if torch.equal(a, b) else f"{where} differs"
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return f"{where}: keys differ"
        for key in a:
            if (result := _same(a[key], b[key], f"{where}.{key}")) is not True:
                return result
        return True
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            if (result := _same(x, y, f"{where}[{i}]")) is not True:
                return result
        return True
    return True if a == b else f"{where}: {a!r} != {b!r}"


def section_checkpoint(report: Report, work: Path, sizes: str) -> None:
    import bench_gpu_checkpoint
    from trainsup.units import parse_size

    result = bench_gpu_checkpoint.run("cuda", [parse_size(s) for s in sizes.split(",")], 3, work, budget_s=100.0)
    report.figures["checkpoint"] = result
    report.blocks.append(bench_gpu_checkpoint.table(result))
    report.row("checkpoint", "sizes measured (seconds, medians; table below)", ", ".join(result.get("sizes", {})))


def _standby_processes() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(word.endswith("standby_process.py") for word in p.info["cmdline"] or [])]


def _standby_run(work: Path, standby: bool, kills: int, steps: int, width: int, delay: float) -> dict[str, Any]:
    from common import Daemon, write_job

    from trainsup.gpu.nvml import NvmlProbe

    tag = "standby" if standby else "fresh"
    record, out, ckpt = work / f"{tag}.jsonl", work / f"{tag}.pt", work / f"{tag}-ckpt"
    # gpu_check.py imports torch inside its functions: name what a standby should import
    preload = {"preload": ["torch", "torch._dynamo", "trainsup.trainer"]} if standby else False
    deaths: list[dict[str, Any]] = []
    with Daemon(work / f"{tag}-home") as daemon:
        job = daemon.submit(write_job(work / f"{tag}-jobs", f"gpu-{tag}",
                                      [PYTHON, SELF, "job", "train", str(record), str(out), str(steps), str(width),
                                       str(delay)],
                                      gpus=0 if DEVICE == "cpu" else 1, checkpoint_dir=str(ckpt),
                                      env={"GPU_CHECK_TRACE": "1"}, standby=preload,
                                      restart={"initial": "0s", "max_restarts": kills + 2, "crash_loop": 0}))
        jobs_dir = work / f"{tag}-home" / "jobs" / job
        for number in range(1, kills + 1):
            wait_until(lambda: sum(r["event"] == "first_step" for r in read_records(record)) >= number, 180,
                       f"attempt {number}'s first step")
            seen: dict[str, Any] = {}
            if standby:
                log = jobs_dir / f"standby-{number + 1}" / "monitor.log"
                wait_until(lambda: log.exists() and "standby ready" in log.read_text(), 120, "the standby ready")
                on_gpu: set[int] = set()
                if DEVICE == "cuda":
                    probe = NvmlProbe()
                    try:
                        on_gpu = {p.pid for p in probe.processes()}
                    finally:
                        probe.close()
                # an activated standby keeps its command line: the running attempt is not a waiting one
                running = daemon.status(job).get("pid")
                waiting = [pid for pid in _standby_processes() if pid != running]
                seen = {"standby_pids": waiting, "standby_on_gpu": sorted(on_gpu & set(waiting))}
            else:
                time.sleep(8.0)  # as long as a standby takes to be ready, so both kill at like points
            time.sleep(1.2)  # at least one in-memory snapshot since the last disk save
            steps_seen = [r["step"] for r in read_records(record) if r["event"] in ("step", "first_step")]
            pid = daemon.status(job).get("pid")
            os.kill(pid, signal.SIGKILL)
            deaths.append({"at": time.time(), "pid": pid, "step": max(steps_seen), **seen})
            wait_until(lambda: daemon.status(job).get("pid") not in (None, pid), 120, "the next attempt")
        state = daemon.wait_state(job, {"succeeded", "failed"}, 600)
        attempts = daemon.attempts(job)
    records = read_records(record)
    firsts = [r for r in records if r["event"] == "first_step"]
    starts = [r for r in records if r["event"] == "start"]
    for death in deaths:
        nxt = next((f for f in firsts if f["at"] > death["at"]), None)
        start = next((s for s in starts if s["started"] > death["at"]), None)
        if nxt and start:
            death.update(death_to_first_step_s=nxt["at"] - death["at"], resumed_at=start["resumed_at"],
                         steps_lost=death["step"] - start["resumed_at"],
                         script_to_cuda_ready_s=start["cuda_ready"] - start["started"])
    notes = []
    for attempt in attempts[1:]:
        started = Path(attempt["run_dir"]) / "started.json"
        notes.append(json.loads(started.read_text()).get("standby") if started.exists() else None)
    resumes = []
    for attempt in attempts[1:]:
        resume = Path(attempt["run_dir"]) / "resume.json"
        resumes.append(json.loads(resume.read_text()) if resume.exists() else None)
    return {"state": state, "deaths": deaths, "standby_notes": notes, "resumes": resumes, "out": str(out)}


def section_standby(report: Report, work: Path, kills: int = 3) -> None:
    import torch

    steps, width, delay = (900, 1024, 0.05) if DEVICE == "cuda" else (400, 64, 0.05)
    reference, _bare = _reference_train(work, steps, width)
    runs = {standby: _standby_run(work, standby, kills, steps, width, delay) for standby in (True, False)}
    report.figures["standby"] = runs
    for standby, run in runs.items():
        tag = "warm standby" if standby else "standby: false"
        equal = _same(torch.load(reference, weights_only=True), torch.load(run["out"], weights_only=True)) \
            if Path(run["out"]).exists() else "no final weights"
        timed = [d for d in run["deaths"] if "death_to_first_step_s" in d]
        med = sorted(d["death_to_first_step_s"] for d in timed)[len(timed) // 2] if timed else None
        cuda = sorted(d["script_to_cuda_ready_s"] for d in timed)[len(timed) // 2] if timed else None
        report.row("standby", f"{tag}: {len(run['deaths'])} SIGKILLs, death -> first step (median)",
                   f"{med:.2f} s ({cuda:.2f} s of it CUDA init in the script); {run['state']}; standby: "
                   f"{run['standby_notes']}" if med is not None else f"{run['state']}, no timing")
        report.row("standby", f"{tag}: steps lost per kill (1 s snapshots, disk every 5)",
                   f"{[d.get('steps_lost') for d in run['deaths']]}; resumed from "
                   f"{[(r or {}).get('checkpoint') for r in run['resumes']]}")
        report.row("standby", f"{tag}: final weights and optimizer vs an uninterrupted run",
                   "torch.equal: all equal" if equal is True else f"DIFFER: {equal}")
        if standby:
            on_gpu = [d.get("standby_on_gpu") for d in run["deaths"]]
            report.row("standby", "waiting standby processes holding GPU memory (NVML), before each kill",
                       f"{on_gpu} (pids {[d.get('standby_pids') for d in run['deaths']]})")


SECTIONS = ("probe", "placement", "oom", "kills", "checkpoint", "standby")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "job":
        job_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check-out"))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder on the disk you train on")
    parser.add_argument("--sizes", default="1GB,4GB", help="checkpoint sizes for the checkpoint section")
    parser.add_argument("--cpu-rehearsal", action="store_true", help="the kills section on the CPU, to try the driver")
    args = parser.parse_args(argv)
    # the daemon, its monitors and the jobs all import trainsup from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    import torch

    if args.cpu_rehearsal:
        os.environ["GPU_CHECK_DEVICE"] = "cpu"
        report = Report(args.out)
        work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.dir))
        if "kills" in args.sections.split(","):
            section_kills(report, work, gpus=0)
        if "standby" in args.sections.split(","):
            section_standby(report, work)
        collect_logs(work, args.out / "gpu_check_logs.txt")
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible to torch here; run it on a machine with an NVIDIA GPU.",
              file=sys.stderr)
        return 2
    report = Report(args.out)
    machine(report)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.dir))
    runners = {"probe": section_probe, "placement": section_placement, "oom": section_oom, "kills": section_kills,
               "checkpoint": lambda r, w: section_checkpoint(r, w, args.sizes), "standby": section_standby}
    failed = 0
    for name in args.sections.split(","):
        started = time.monotonic()
        print(f"== {name}", flush=True)
        folder = work / name
        folder.mkdir()
        try:
            runners[name](report, folder)
        except Exception as exc:  # one broken section must not hide the others' figures
            failed += 1
            report.figures.setdefault("errors", {})[name] = traceback.format_exc()
            report.row(name, "section FAILED", f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        report.figures.setdefault("section_seconds", {})[name] = round(time.monotonic() - started, 1)
        report.save()
    collect_logs(work, args.out / "gpu_check_logs.txt")
    print((args.out / "gpu_check.md").read_text())
    return 1 if failed else 0


def collect_logs(work: Path, target: Path) -> None:
    """The daemons' logs and the tail of every job log, for reading a failure afterwards."""
    parts = []
    for path in sorted(work.rglob("*-daemon.log")) + sorted(work.rglob("attempt-*.log")):
        text = path.read_text(errors="replace")
        parts.append(f"===== {path.relative_to(work)}\n{text[-6000:]}")
    target.write_text("\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
