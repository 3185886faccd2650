"""The Slurm pieces that need no cluster: the script, Slurm's answers, how a Slurm job is found and
described, and the CLI's one-sentence errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support import TRAINSUP, Cli, write_spec
from trainsup.errors import SpecError
from trainsup.jobs.spec import parse_spec
from trainsup.paths import StateDir
from trainsup.slurm import cluster, script
from trainsup.slurm.records import RunReport, SlurmDir, SlurmJob

SCONTROL_LINE = (
    "JobId=7 JobName=train UserId=ana(1000) GroupId=ana(1000) MCS_label=N/A Priority=1 Nice=0 Account=lab QOS=normal "
    "JobState=PENDING Reason=BeginTime Dependency=(null) Requeue=1 Restarts=2 BatchFlag=1 Reboot=0 ExitCode=0:0 "
    "RunTime=00:00:00 TimeLimit=01:00:00 TimeMin=N/A SubmitTime=2026-11-30T01:00:00 Partition=gpu "
    "NodeList=(null) Comment=trainsup: failed: CUDA error in epoch 3 WorkDir=/home/ana/my run StdOut=/x.log Power=")


def _spec(text: str = ""):
    return parse_spec("name: train\ncommand: [python, train.py]\ncheckpoint_dir: ckpt\ngrace_period: 30s\n"
                      + text, "job.yaml")


def test_the_script_carries_requeue_the_signal_gpus_and_the_spec_options() -> None:
    spec = _spec("gpus: 2\nslurm: {partition: gpu, account: lab, qos: high, time: 90m, cpus_per_task: 8, mem: 64G,"
                 " sbatch: [--constraint=a100, --exclusive]}\n")
    text = script.render(spec, Path("/home/ana/job.yaml"), Path("/home/ana"), Path("/home/ana/.state/slurm"),
                         "/venv/bin/python")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH ")]
    assert sbatch == ["--job-name=train", "--requeue", "--signal=B:USR1@40", "--open-mode=append",
                      "--output=/home/ana/.state/slurm/%j.log", "--chdir=/home/ana", "--gres=gpu:2",
                      "--time=0-01:30:00", "--partition=gpu", "--account=lab", "--qos=high", "--cpus-per-task=8",
                      "--mem=64G", "--constraint=a100", "--exclusive"]
    # exec: trainsup becomes the batch shell, the one process `B:USR1` signals
    assert lines[-1] == ("exec /venv/bin/python -m trainsup run /home/ana/job.yaml --report "
                         '/home/ana/.state/slurm/"$SLURM_JOB_ID".report.json')


def test_without_a_slurm_section_there_is_no_time_limit_or_partition() -> None:
    text = script.render(_spec(), Path("/j/job.yaml"), Path("/j"), Path("/s/slurm"), "python", name="other")
    assert "--time" not in text and "--partition" not in text and "--gres" not in text
    assert "trainsup run /j/job.yaml --name other --report" in text


@pytest.mark.parametrize("seconds, limit", [(1, "0-00:01:00"), (60, "0-00:01:00"), (61, "0-00:02:00"),
                                            (3600, "0-01:00:00"), (86400 + 90, "1-00:02:00")])
def test_time_limits_round_up_to_minutes(seconds: float, limit: str) -> None:
    assert script.time_limit(seconds) == limit


def test_a_time_limit_within_the_signal_time_is_refused() -> None:
    with pytest.raises(SpecError, match="leaves no time to run before the stop signal, 40s before the limit"):
        script.render(_spec("slurm: {time: 40s}\n"), Path("/j/job.yaml"), Path("/j"), Path("/s"), "python")


def test_a_path_an_sbatch_line_cannot_hold_is_refused() -> None:
    with pytest.raises(SpecError, match="has characters an #SBATCH line cannot hold"):
        script.render(_spec(), Path("/j/job.yaml"), Path("/my jobs"), Path("/s"), "python")


def test_bad_slurm_sections_are_one_sentence() -> None:
    for text, needle in [("slurm: {sbatch: ['rm -rf /']}", "is not one sbatch option"),
                         ("slurm: {partition: 'a b'}", "slurm.partition"), ("slurm: {time: 0}", "slurm.time"),
                         ("slurm: {nodes: 2}", "unknown field 'slurm.nodes'")]:
        with pytest.raises(SpecError, match=needle):
            _spec(text + "\n")


def test_scontrol_lines_with_spaces_in_values_are_read() -> None:
    info = cluster.parse_scontrol("7", SCONTROL_LINE)
    assert (info.state, info.reason, info.partition, info.nodes, info.restarts) == ("PENDING", "BeginTime", "gpu",
                                                                                     None, 2)
    assert info.comment == "trainsup: failed: CUDA error in epoch 3"
    assert (info.time_limit_s, info.run_time_s, info.at_time_limit) == (3600, 0, False)
    late = cluster.parse_scontrol("7", SCONTROL_LINE.replace("RunTime=00:00:00", "RunTime=00:59:58"))
    assert late.at_time_limit
    unlimited = cluster.parse_scontrol("7", SCONTROL_LINE.replace("TimeLimit=01:00:00", "TimeLimit=UNLIMITED"))
    assert unlimited.time_limit_s is None and not unlimited.at_time_limit


def test_sacct_lines_are_read() -> None:
    info = cluster.parse_sacct("9", "9|FAILED|NonZeroExitCode|debug|node3|1:0|trainsup: failed: x")
    assert (info.state, info.nodes, info.exit_code, info.comment, info.finished) == (
        "FAILED", "node3", "1:0", "trainsup: failed: x", True)
    assert cluster.parse_sacct("9", "9|CANCELLED by 1000|||||").state == "CANCELLED"


def _report(**fields) -> RunReport:
    base = dict(job_id="ab12cd34", name="train", state="running", attempt=3, last_reason="crash", result=None,
                node="node7", slurm_id="7", allocation=2, attempts_before=1, stop=None, state_dir="/tmp/x",
                updated_at=0.0)
    return RunReport(**{**base, **fields})


def _job() -> SlurmJob:
    return SlurmJob(slurm_id="7", name="train", spec_path="/j/job.yaml", partition="gpu", submitted_at=1.0,
                    script="/s/7.sbatch", log="/s/7.log", report="/s/7.report.json")


def test_describe_says_where_it_waits_or_runs_and_how_often_it_was_requeued() -> None:
    from trainsup.commands.slurm import describe

    pending = cluster.parse_scontrol("7", SCONTROL_LINE)
    assert describe(_job(), pending, None) == "pending on partition gpu (BeginTime), requeued 2 times"
    running = pending.model_copy(update={"state": "RUNNING", "nodes": "node7", "reason": None, "restarts": 1})
    assert describe(_job(), running, _report()) == "running on node node7, attempt 3, requeued 1 time"
    done = running.model_copy(update={"state": "COMPLETED", "exit_code": "0:0"})
    assert describe(_job(), done, _report(state="succeeded", result="the job exited 0")) == \
        "completed (exit 0:0; attempt 3, requeued 1 time): the job exited 0"
    assert describe(_job(), None, _report(state="failed", result="boom")).startswith(
        "failed (as trainsup run last reported, on node node7; requeued 1 time): boom")


def test_a_slurm_job_is_found_by_id_or_name_and_a_local_name_wins(tmp_path: Path) -> None:
    from trainsup.commands.slurm import claim

    state = StateDir(tmp_path / "state")
    state.ensure()
    SlurmDir(state).save(_job())
    assert claim(state, "7").slurm_id == "7"
    assert claim(state, "slurm:train").slurm_id == "7"
    assert claim(state, "train").slurm_id == "7"
    assert claim(state, "other") is None
    with pytest.raises(Exception, match="no job matches 'slurm:8'"):
        claim(state, "slurm:8")


def test_submit_slurm_dry_run_prints_the_script(cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "job.yaml", name="j", command=["python", "t.py"], checkpoint_dir="ckpt",
                      grace_period="1m", slurm={"time": "2h", "partition": "debug"})
    result = cli.run("submit", str(spec), "--slurm", "--dry-run")
    assert "#SBATCH --signal=B:USR1@70\n" in result.stdout and "#SBATCH --partition=debug\n" in result.stdout
    assert json.loads(cli.run("submit", str(spec), "--slurm", "--dry-run", "--json").stdout)["name"] == "j"
    assert not Path(cli.env["TRAINSUP_HOME"]).exists()  # nothing written


def test_submit_slurm_errors_are_one_sentence(cli: Cli, tmp_path: Path) -> None:
    no_checkpoints = write_spec(tmp_path / "a.yaml", name="a", command=["python", "t.py"])
    result = cli.run("submit", str(no_checkpoints), "--slurm", check=False)
    assert result.returncode == 2 and "a Slurm job needs checkpoint_dir" in result.stderr
    assert result.stderr.count("\n") == 1
    spec = write_spec(tmp_path / "b.yaml", name="b", command=["python", "t.py"], checkpoint_dir="ckpt")
    env = {**cli.env, "PATH": str(tmp_path / "empty")}
    result = subprocess.run([TRAINSUP, "submit", str(spec), "--slurm"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == ("trainsup: sbatch is not installed or not on PATH: submitting to Slurm needs the "
                             "Slurm client commands.\n")
    assert not (Path(cli.env["TRAINSUP_HOME"]) / "slurm").exists() or not list(
        (Path(cli.env["TRAINSUP_HOME"]) / "slurm").glob("*.json"))
    result = cli.run("submit", str(spec), "--dry-run", check=False)
    assert result.returncode == 2 and "--dry-run goes with --slurm" in result.stderr


class _Probe:
    def __init__(self) -> None:
        from trainsup.gpu.probe import GpuInfo, GpuProcess

        self.infos = [GpuInfo(i, f"GPU-{i}aaa-{i}", "H200", 100, 0) for i in range(4)]
        self.procs = [GpuProcess(10 + i, f"GPU-{i}aaa-{i}", 5) for i in range(4)]
        self.closed = False

    def gpus(self):
        return self.infos

    def processes(self):
        return self.procs

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("visible, indices", [("2,3", [2, 3]), ("GPU-1aaa-1", [1]), ("GPU-0aaa", [0]),
                                              ("", []), ("0, 3", [0, 3])])
def test_inside_slurm_only_the_allocated_gpus_are_placed_on(visible: str, indices: list[int]) -> None:
    from trainsup.slurm.gpus import AllocatedGpus

    probe = AllocatedGpus(_Probe(), visible.split(","))
    assert [gpu.index for gpu in probe.gpus()] == indices
    assert [process.pid for process in probe.processes()] == [10 + i for i in indices]


def test_the_allocated_probe_applies_only_inside_slurm_with_visible_devices(monkeypatch) -> None:
    from trainsup.slurm.gpus import AllocatedGpus, allocated_probe

    assert allocated_probe({"CUDA_VISIBLE_DEVICES": "0"}) is None
    assert allocated_probe({"SLURM_JOB_ID": "5"}) is None
    monkeypatch.setattr("trainsup.gpu.probe.probe_from_env", lambda environ: _Probe())
    found = allocated_probe({"SLURM_JOB_ID": "5", "CUDA_VISIBLE_DEVICES": "1"})
    assert isinstance(found, AllocatedGpus) and [gpu.index for gpu in found.gpus()] == [1]
