"""Issue 4 end to end on a simulated GPU: OOM batch backoff, hangs, placement, host OOM."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from support import JOBS, Cli, DaemonProcess, wait_for, write_spec
from trainsup.gpu.probe import GpuProcess
from trainsup.gpu.simulated import OTHER_USER_PID, write_sim
from trainsup.supervisor import cgroup

PY = sys.executable
GIB = 2**30


@pytest.fixture
def sim_gpus(tmp_path: Path, state_env: dict[str, str]) -> Path:
    path = tmp_path / "gpus.json"
    write_sim(path, 1, memory_total=20 * GIB)
    state_env["TRAINSUP_SIMULATED_GPUS"] = str(path)
    return path


def test_cuda_oom_backs_off_micro_batch_until_it_fits(cli: Cli, daemon: DaemonProcess, sim_gpus: Path, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "oom.yaml", name="oom", command=[PY, str(JOBS / "gpu_oom.py")], gpus=1,
                      batch_size={"global": 256, "micro": 64, "min_micro": 4},
                      restart={"max_restarts": 1, "initial": "0.05s"})
    job = cli.submit(spec)
    final = cli.wait_state(job, "succeeded", "failed", timeout=120)
    assert final["state"] == "succeeded", final
    attempts = final["attempts"]
    assert [a["reason"] for a in attempts] == ["cuda_oom", "cuda_oom", "succeeded"]
    assert [a["batch"] for a in attempts] == [
        {"global": 256, "micro": 64, "grad_accum": 4},
        {"global": 256, "micro": 32, "grad_accum": 8},
        {"global": 256, "micro": 16, "grad_accum": 16},
    ]
    logs = cli.run("logs", job).stdout
    assert "micro 16 accum 16 global 256 gpu GPU-sim-0" in logs
    assert "one optimizer step over 256 samples" in logs
    timeline = " ".join(e["message"] for e in cli.json("show", job)["events"])
    assert "micro-batch 64 → 32" in timeline and "global batch 256 unchanged" in timeline

    # A resubmission starts from what worked, not from the spec's 64.
    again = cli.submit(spec, "--again")
    final = cli.wait_state(again, "succeeded", "failed", timeout=120)
    assert [a["batch"]["micro"] for a in final["attempts"]] == [16]


def test_oom_below_min_micro_fails_with_that_reason(cli: Cli, daemon: DaemonProcess, sim_gpus: Path, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "oom.yaml", name="tight", command=[PY, str(JOBS / "gpu_oom.py")], gpus=1,
                      batch_size={"global": 128, "micro": 64, "min_micro": 32},
                      restart={"initial": "0.05s"})
    final = cli.wait_state(cli.submit(spec), "succeeded", "failed", timeout=120)
    assert final["state"] == "failed"
    assert "min_micro 32" in final["result"]


def test_hung_job_is_killed_with_a_stack_dump_and_resumes(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "hang.yaml", name="hang", command=[PY, str(JOBS / "hang.py")],
                      heartbeat={"timeout": "1s"}, restart={"initial": "0.05s"})
    job = cli.submit(spec)
    final = cli.wait_state(job, "succeeded", "failed", timeout=60)
    assert [a["reason"] for a in final["attempts"]] == ["hang", "succeeded"]
    first_attempt_log = cli.run("logs", job, "--attempt", "1").stdout
    assert "stuck_in_data_loader" in first_attempt_log, "the stack dump is in the log"
    assert any(e["kind"] == "hang" for e in cli.json("show", job)["events"])


def test_jobs_without_heartbeats_are_not_judged_hung(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "quiet.yaml", name="quiet", command="sleep 2.5", heartbeat={"timeout": "1s"})
    final = cli.wait_state(cli.submit(spec), "succeeded", "failed", timeout=60)
    assert final["state"] == "succeeded"


def test_log_silence_detection_is_opt_in(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "silent.yaml", name="silent",
                      command='echo hi; [ "$TRAINSUP_ATTEMPT" = 2 ] || sleep 600',
                      heartbeat={"log_silence": "1s"}, restart={"initial": "0.05s"})
    final = cli.wait_state(cli.submit(spec), "succeeded", "failed", timeout=60)
    assert [a["reason"] for a in final["attempts"]] == ["hang", "succeeded"]


def test_two_jobs_for_one_gpu_run_one_after_the_other(cli: Cli, daemon: DaemonProcess, sim_gpus: Path, tmp_path: Path):
    daemon.start()
    records = [tmp_path / "a.txt", tmp_path / "b.txt"]
    jobs = [cli.submit(write_spec(tmp_path / f"{r.stem}.yaml", name=f"gpu-{r.stem}", gpus=1,
                                  command=[PY, str(JOBS / "gpu_hold.py"), str(r), "1.5"])) for r in records]
    for job in jobs:
        assert cli.wait_state(job, "succeeded", "failed", timeout=90)["state"] == "succeeded"
    (a_start, a_end, a_gpu), (b_start, b_end, b_gpu) = (r.read_text().split() for r in records)
    assert a_gpu == b_gpu == "GPU-sim-0"
    assert float(a_end) <= float(b_start) or float(b_end) <= float(a_start), "never on the GPU together"
    peaks = [cli.job(job)["attempts"][0]["peak_gpu_memory"] for job in jobs]
    assert all(peak is not None and peak >= 2 * GIB for peak in peaks), peaks


def test_jobs_that_name_their_memory_share_a_gpu_and_an_exclusive_one_waits_for_both(
        cli: Cli, daemon: DaemonProcess, sim_gpus: Path, tmp_path: Path):
    """Found on an H200: every grant was recorded as exclusive, so two `min_free_memory`
    jobs ran one after the other."""
    daemon.start()
    records = {name: tmp_path / f"{name}.txt" for name in ("c", "d", "e")}

    def submit(name: str, hold: str, **fields: object) -> str:
        return cli.submit(write_spec(tmp_path / f"{name}.yaml", name=f"gpu-{name}", gpus=1,
                                     command=[PY, str(JOBS / "gpu_hold.py"), str(records[name]), hold], **fields))

    shared = [submit("c", "3", min_free_memory="6GiB"), submit("d", "3", min_free_memory="6GiB")]
    wait_for(lambda: all(cli.job(job)["state"] == "running" for job in shared), 30, what="both shared jobs running")
    exclusive = submit("e", "0.1")
    for job in [*shared, exclusive]:
        assert cli.wait_state(job, "succeeded", "failed", timeout=90)["state"] == "succeeded"
    (c_start, c_end, _), (d_start, d_end, _), (e_start, _, _) = (
        records[name].read_text().split()
        for name in ("c", "d", "e"))
    assert max(float(c_start), float(d_start)) < min(float(c_end), float(d_end)), "the shared jobs ran together"
    assert float(e_start) >= max(float(c_end), float(d_end)), "the exclusive job waited for both"


def test_other_users_memory_delays_placement(cli: Cli, daemon: DaemonProcess, sim_gpus: Path, tmp_path: Path):
    write_sim(sim_gpus, 1, [GpuProcess(OTHER_USER_PID, "GPU-sim-0", 12 * GIB)], memory_total=20 * GIB)
    daemon.start()
    spec = write_spec(tmp_path / "wait.yaml", name="wait", gpus=1, command="echo $CUDA_VISIBLE_DEVICES")
    job = cli.submit(spec)
    wait_for(lambda: any(e["kind"] == "waiting" for e in cli.json("show", job)["events"]), 30, what="waiting")
    time.sleep(1.0)
    assert cli.job(job)["state"] == "queued", "an exclusive job waits while another user holds the GPU"
    write_sim(sim_gpus, 1, memory_total=20 * GIB)
    assert cli.wait_state(job, "succeeded", "failed", timeout=30)["state"] == "succeeded"
    assert "GPU-sim-0" in cli.run("logs", job).stdout

    shared = write_spec(tmp_path / "shared.yaml", name="shared", gpus=1, min_free_memory="4GiB", command="true")
    write_sim(sim_gpus, 1, [GpuProcess(OTHER_USER_PID, "GPU-sim-0", 12 * GIB)], memory_total=20 * GIB)
    assert cli.wait_state(cli.submit(shared), "succeeded", "failed", timeout=30)["state"] == "succeeded", \
        "a job that names the memory it needs shares the GPU"


def test_more_gpus_than_the_machine_has_fails_at_once(cli: Cli, daemon: DaemonProcess, sim_gpus: Path, tmp_path: Path):
    daemon.start()
    final = cli.wait_state(cli.submit(write_spec(tmp_path / "big.yaml", name="big", gpus=4, command="true")), "failed")
    assert "asks for 4 GPUs but this machine has 1 GPU" in final["result"]


def _can_make_cgroups() -> str | None:
    try:
        probe = cgroup.create_job_cgroup("trainsup-probe", 64 * 2**20)
    except cgroup.CgroupError as exc:
        return str(exc)
    if probe is None:
        return "this machine does not let us create a memory cgroup"
    cgroup.remove(probe)
    return None


@pytest.mark.skipif(_can_make_cgroups() is not None, reason=str(_can_make_cgroups()))
def test_kernel_oom_kill_is_classified_host_oom(cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    daemon.start()
    spec = write_spec(tmp_path / "hog.yaml", name="hog", memory_limit="64MiB", restart={"max_restarts": 0},
                      command=[PY, "-c", "import time; x = bytearray(512 * 2**20); time.sleep(5)"])
    final = cli.wait_state(cli.submit(spec), "failed", "succeeded", timeout=60)
    attempt = final["attempts"][0]
    assert attempt["signal"] == 9 and attempt["reason"] == "host_oom", attempt
