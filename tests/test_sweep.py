"""Sweeps: the pure expansion of a `sweep:` matrix, and a real one through the CLI and daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import Cli, DaemonProcess, wait_for
from trainsup.errors import SpecError
from trainsup.jobs.spec import parse_specs
from trainsup.jobs.sweep import combinations, expand, job_name, substitute, sweep_name

MATRIX = {"model": ["vgg11", "resnet18"], "resolution": [224, 256, 320]}


def test_combinations_in_written_order():
    combos = combinations(MATRIX, "job.yaml")
    assert len(combos) == 6
    assert combos[0] == {"model": "vgg11", "resolution": 224}
    assert combos[-1] == {"model": "resnet18", "resolution": 320}


@pytest.mark.parametrize("matrix, fragment", [
    ([1, 2], "must map each key"),
    ({}, "must map each key"),
    ({"a b": [1]}, "is not a key"),
    ({"m": []}, "non-empty list"),
    ({"m": "vgg"}, "non-empty list"),
    ({"m": [None]}, "strings, numbers or booleans"),
    ({"m": [[1]]}, "strings, numbers or booleans"),
    ({"m": [1, "1"]}, "repeat"),
    ({"a": list(range(40)), "b": list(range(40))}, "1600 combinations"),
])
def test_bad_matrices_are_one_sentence(matrix, fragment):
    with pytest.raises(SpecError, match=fragment) as caught:
        combinations(matrix, "job.yaml")
    assert str(caught.value).startswith("job.yaml: field 'sweep': ") and "\n" not in str(caught.value)


def test_placeholders_and_escapes():
    values = {"model": "vgg11", "lr": 0.1, "amp": True}
    assert substitute("--model {model} --lr={lr} --amp {amp}", values, "w") == "--model vgg11 --lr=0.1 --amp true"
    assert substitute("awk '{{print $1}}' {model}", values, "w") == "awk '{print $1}' vgg11"
    with pytest.raises(SpecError, match=r"the placeholder \{HOME\} names no sweep key \(the keys are model, lr, amp\)"):
        substitute("echo ${HOME}", values, "job.yaml: field 'command'")
    with pytest.raises(SpecError, match="placeholder { names no sweep key"):
        substitute("a { b", values, "w")


def test_names():
    values = {"model": "vgg11", "resolution": 224}
    assert job_name("cls", values, "w") == "cls-model_vgg11-resolution_224"
    assert job_name("cls-{model}", values, "w") == "cls-vgg11-resolution_224"
    assert job_name("{model}.{resolution}", values, "w") == "vgg11.224"
    assert job_name("r", {"opt": "a/b c"}, "w") == "r-opt_a_b_c"
    assert sweep_name("cls", "job.yaml") == "cls"
    assert sweep_name("cls-{model}-r{resolution}", "job.yaml") == "cls-r"
    assert sweep_name("{model}-{resolution}", "/x/night.yaml") == "night"


def test_expand_fills_name_command_env_and_checkpoint_dir_only():
    data = {"name": "cls", "sweep": MATRIX, "command": ["python", "train.py", "--arch={model}", 3],
            "env": {"RES": "{resolution}", "N": 4}, "checkpoint_dir": "runs/{model}-{resolution}",
            "resume": {"args": ["--resume", "{checkpoint}"], "checkpoint": "*.pt"}}
    jobs = expand(data, "job.yaml")
    values, first = jobs[0]
    assert first["name"] == "cls-model_vgg11-resolution_224"
    assert first["command"] == ["python", "train.py", "--arch=vgg11", 3]
    assert first["env"] == {"RES": "224", "N": 4}
    assert first["checkpoint_dir"] == "runs/vgg11-224"
    assert first["resume"]["args"] == ["--resume", "{checkpoint}"]
    assert first["sweep"] == {"name": "cls", "values": {"model": "vgg11", "resolution": 224}}
    assert "sweep" in data and data["command"][2] == "--arch={model}"  # the input is left alone


def test_two_combinations_with_one_name_are_refused():
    with pytest.raises(SpecError, match="both give the job name r-m_a_b"):
        expand({"name": "r", "sweep": {"m": ["a b", "a/b"]}, "command": "x"}, "job.yaml")
    with pytest.raises(SpecError, match="longer than 100 characters"):
        expand({"name": "r", "sweep": {"m": ["x" * 120]}, "command": "x"}, "job.yaml")


def test_parse_specs_validates_each_combination():
    text = "name: cls\nsweep: {model: [vgg11, resnet18]}\ncommand: python t.py --arch {model}\n"
    specs = parse_specs(text, "job.yaml")
    assert [s.command[-1] for s in specs] == ["python t.py --arch vgg11", "python t.py --arch resnet18"]
    assert specs[1].sweep.name == "cls" and specs[1].sweep.values == {"model": "resnet18"}
    assert parse_specs("name: one\ncommand: x\n", "job.yaml")[0].sweep is None
    with pytest.raises(SpecError, match=r"^job.yaml \(m=b\\x00c\): field 'env': the value of E must not contain a NUL"):
        parse_specs('name: r\nsweep: {m: [a, "b\\0c"]}\ncommand: x\nenv: {E: "{m}"}\n', "job.yaml")


def _sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: cls\n"
        "sweep: {model: [vgg11, resnet18], resolution: [224, 256, 320]}\n"
        "command: \"echo {model} at {resolution}; test -e ok || test {model}@{resolution} != vgg11@320\"\n"
        "restart: {max_restarts: 0}\n"
    )
    return path


def test_a_failing_combination_blocks_nothing_and_a_resubmit_queues_only_it(
        cli: Cli, daemon: DaemonProcess, tmp_path: Path):
    spec = _sweep_file(tmp_path)
    first = cli.json("submit", str(spec))
    assert [job["queued"] for job in first] == [True] * 6
    daemon.start()
    ids = [job["id"] for job in first]
    wait_for(lambda: all(cli.job(i)["state"] in ("succeeded", "failed") for i in ids), 60, 0.3, "the sweep to end")
    summary = cli.json("status", "--sweep", "cls")
    assert summary["totals"] == {"succeeded": 5, "failed": 1}
    failed = [c for c in summary["combinations"] if c["state"] == "failed"]
    assert [c["values"] for c in failed] == [{"model": "vgg11", "resolution": 320}]

    (tmp_path / "ok").touch()  # the fix
    again = cli.json("submit", str(spec))
    queued = [job for job in again if job["queued"]]
    assert [job["name"] for job in queued] == ["cls-model_vgg11-resolution_320"]
    assert {job["state"] for job in again if not job["queued"]} == {"succeeded"}
    cli.wait_state(queued[0]["id"], "succeeded")
    table = cli.run("status", "--sweep", "cls").stdout
    assert "model=vgg11 resolution=320" in table and "6 combinations: 6 succeeded" in table
    assert len(cli.json("status")) == 7  # one more job, none rerun


def test_sweep_errors_queue_nothing(cli: Cli, tmp_path: Path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: r\nsweep: {m: [a, b]}\ncommand: echo ${HOME} {m}\n")
    result = cli.run("submit", str(spec), check=False)
    assert result.returncode == 2 and "names no sweep key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert cli.json("status") == []
    assert cli.run("status", "--sweep", "r", check=False).returncode == 3
