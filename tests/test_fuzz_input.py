"""Fuzzing the two inputs a user controls: job files and inbox request files.

500 seeded mutations of valid job files go through the real `trainsup.cli.main` (one
process, in a loop: the real code path without 500 interpreter starts). Each must be
queued, or refused with exit 2 and one sentence. Then 500 mutations of valid inbox
requests join them, and one real daemon takes the whole inbox: it must not crash, must
set aside exactly the requests that are not valid, must run a sample of the accepted
jobs, and must write nothing outside the state dir and the checkpoint dirs.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from support import DaemonProcess, kill_leftover_monitors, wait_for
from trainsup.jobs.inbox import drop

SEED = 12
JOB_FILES = 500
INBOX_FILES = 500
SAMPLE = 10
SECRET = "canary-fuzz-secret"

TEMPLATES: list[dict[str, Any]] = [
    {"name": "plain", "command": ["true"], "grace_period": "1s",
     "restart": {"max_restarts": 0, "initial": "0s", "max": "1s"}, "env": {"A": "1", "B": "text"}},
    {"name": "shell", "command": "true", "on_boot": "hold", "stop_signal": "INT", "gpus": 0,
     "heartbeat": {"first_timeout": "1h", "safety_factor": 3}, "restart": {"max_restarts": 0, "on": {"hang": 1}}},
    {"name": "resume", "command": ["/bin/sh", "-c", "exit 0", "x"], "resume": {"args": ["--from", "{checkpoint}"],
     "checkpoint": "*.pt"}, "batch_size": {"global": 8, "micro": 4}, "restart": {"max_restarts": 0}},
    {"name": "sized", "command": ["true", "1", 2.5], "min_free_memory": "1GiB", "env_exclude": ["*SECRET*"],
     "restart": {"max_restarts": 0, "jitter": 0, "factor": 1.5, "crash_loop": 0}},
]
FIELDS = ["name", "command", "workdir", "env", "env_exclude", "checkpoint_dir", "restart", "grace_period",
          "stop_signal", "gpus", "min_free_memory", "memory_limit", "batch_size", "heartbeat", "on_boot", "resume"]
NESTED = {"restart": ["max_restarts", "on", "initial", "max", "factor", "jitter", "crash_loop", "min_uptime"],
          "heartbeat": ["timeout", "first_timeout", "checkpoint_timeout", "safety_factor", "min_timeout"],
          "batch_size": ["global", "micro", "min_micro", "factor"], "resume": ["args", "checkpoint"],
          "env": ["A", "PATH", "X_Y", "1BAD", "a-b", ""]}
SNIPPETS = ["\t", ":", ": ", "-", "- ", "{", "}", "[", "]", "&a ", "*a", "<<: *a\n", "!!python/object:x ", "!x ",
            "'", '"', '"\\0"', '"\\udcff"', "#", "\n", "\n  ", "ÿ", "💥", "\x00", "\x1b", "? [a]\n: 1\n",
            "gpus: 1\n", "gpus: true\n", "name: dup\n", "~", "..", "/proc/x", "0x10", "1e999", ".nan", "yes"]


def values(rng: random.Random, root: Path) -> list[Any]:
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    pool = [0, 1, -1, 2, 2**31, 2**63, 2**70, 0.5, -0.5, 1e308, math.nan, math.inf, True, False, None, "",
            "x", "true", "1", "2", "5s", "1h30m", "-5s", "5 parsecs", "20GiB", "nan", "\x00", "a\x00b", "a\nb",
            "~nosuchuser/x", "~", "/proc/x", "/sys/x", "/dev/null", "/", "..", "../../../../tmp/x", "💥",
            "SIGKILL", "hold", "*.pt", "{checkpoint}", str(root / "ckpts" / "abs"), "sub/dir", [], ["true"],
            ["true", 1], [["true"]], {}, {"a": 1}, {"A": "1"}, {"A": None}, deep, ["x"] * 5000]
    if rng.random() < 0.02:
        pool.append("x" * 200_000)
    return pool


def mutate_job(rng: random.Random, template: dict[str, Any], root: Path, index: int) -> str:
    data = json.loads(json.dumps(template))
    data["checkpoint_dir"] = f"../ckpts/c{index}"
    pool = values(rng, root)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        if op < 0.35:
            data[rng.choice(FIELDS + ["gpu", "restarts", "extra"])] = rng.choice(pool)
        elif op < 0.6:
            section = rng.choice(list(NESTED))
            if not isinstance(data.get(section), dict):
                data[section] = {}
            data[section][rng.choice(NESTED[section] + ["unknown"])] = rng.choice(pool)
        elif op < 0.7 and data:
            del data[rng.choice(list(data))]
        elif op < 0.8:
            command = data.get("command")
            data["command"] = (command if isinstance(command, list) else ["true"]) + [rng.choice(pool)]
        else:
            break
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    for _ in range(rng.choice([0, 0, 1, 2])):
        op, at = rng.random(), rng.randrange(len(text) + 1)
        if op < 0.5:
            text = text[:at] + rng.choice(SNIPPETS) + text[at:]
        elif op < 0.65:
            text = text[:at] + text[at + rng.randint(1, 20):]
        elif op < 0.8:
            lines = text.splitlines(keepends=True)
            line = rng.randrange(len(lines))
            text = "".join(lines[:line + 1] + [lines[line]] + lines[line + 1:])
        elif op < 0.9:
            text = "base: &a\n  gpus: 0\n" + text
        elif op < 0.97:
            text = text[:at]
        else:
            text += "#" + "x" * (1 << 20) + "\n"
    return text


def mutate_request(rng: random.Random, base: dict[str, Any], root: Path) -> bytes:
    data = json.loads(json.dumps(base))
    pool = values(rng, root) + ["../escaped", "../../escaped", "0123abcd", "ABCDEF01", "cancel", "release",
                                "restart", "hold", "rm", str(root / "elsewhere"), "relative", "/tmp/../etc"]
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        target = data.get("spec") if isinstance(data.get("spec"), dict) and rng.random() < 0.5 else data
        if not isinstance(target, dict):
            continue
        if op < 0.55 and target:
            value = rng.choice(pool)
            target[rng.choice(list(target) + ["extra"])] = value if not (isinstance(value, float) and
                                                                        not math.isfinite(value)) else str(value)
        elif op < 0.7 and target:
            del target[rng.choice(list(target))]
        elif op < 0.8:
            data["environment"] = {SECRET.upper().replace("-", "_"): SECRET, "PATH": "/bin"}
        elif op < 0.9:
            data["job_id"] = rng.choice(["../../escaped", "../../../../tmp/x", f"{rng.getrandbits(32):08x}",
                                         "jobs/../../x", ""])
    raw = json.dumps(data, ensure_ascii=rng.random() < 0.5).encode(errors="surrogatepass")
    op = rng.random()
    if op < 0.06:
        raw = raw[:rng.randrange(len(raw))]
    elif op < 0.1:
        at = rng.randrange(len(raw))
        raw = raw[:at] + rng.choice([b"\xff", b"\x00", b"[" * 5000, b"}", b'"']) + raw[at:]
    return raw


DRIVER = r"""
import contextlib, io, json, sys
from trainsup.cli import main
argv_file, results_file = sys.argv[1:3]
results = []
for argv in json.loads(open(argv_file).read()):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["trainsup", *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
open(results_file, "w").write(json.dumps(results))
"""


def run_cli(env: dict[str, str], argvs: list[list[str]], work: Path) -> list[dict[str, Any]]:
    """Each argv through the real `trainsup.cli.main`, in one process."""
    (work / "argv.json").write_text(json.dumps(argvs))
    subprocess.run([sys.executable, "-c", DRIVER, str(work / "argv.json"), str(work / "results.json")],
                   env=env, check=True, timeout=120)
    return json.loads((work / "results.json").read_text())


def leaks_no_secret(spec: dict[str, Any], environment: dict[str, str]) -> bool:
    """The canary is stored only under a name the job's own env_exclude lets through."""
    return all(excluded_by_nothing(name, spec.get("env_exclude", ())) for name, value in environment.items()
               if SECRET in value)


def excluded_by_nothing(name: str, patterns: Any) -> bool:
    from trainsup.jobs.spec import excluded

    return not excluded(name, list(patterns))


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            found[path] = (info.st_size, info.st_mtime)
    return found


def test_fuzzed_job_files_and_inbox_requests(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    root = tmp_path / "root"
    state, project, ckpts, work = root / "state", root / "project", root / "ckpts", tmp_path / "work"
    for folder in (project, ckpts, work):
        folder.mkdir(parents=True)
    env = {**os.environ, "TRAINSUP_HOME": str(state), "FUZZ_SECRET": SECRET, "HOME": str(root / "home")}
    env.pop("NOTIFY_SOCKET", None)

    # 1. Job files through the real CLI: queued, or exit 2 with one sentence.
    argvs = []
    for index in range(JOB_FILES):
        template = TEMPLATES[index % len(TEMPLATES)]
        text = (yaml.safe_dump({**template, "checkpoint_dir": f"../ckpts/c{index}"}) if index < len(TEMPLATES)
                else mutate_job(rng, template, root, index))
        path = project / f"job-{index:03d}.yaml"
        path.write_text(text, errors="surrogatepass")
        argvs.append(["submit", str(path), "--json"])
    results = run_cli(env, argvs, work)
    accepted: dict[str, dict[str, Any]] = {}
    for result in results:
        assert result["code"] in (0, 2), result
        assert "Traceback" not in result["stderr"], result
        if result["code"] == 0:
            assert result["stderr"] == "", result
            accepted[json.loads(result["stdout"])["id"]] = result
        else:
            line = result["stderr"].rstrip("\n")
            assert result["stdout"] == "" and "\n" not in line and line.startswith("trainsup: "), result
            assert len(line) < 600, line
    submissions = {}
    for path in sorted((state / "inbox").iterdir()):
        request = json.loads(path.read_text())
        submissions[request["job_id"]] = request
    assert set(submissions) == set(accepted)
    assert 50 < len(accepted) < JOB_FILES - 50, len(accepted)
    for request in submissions.values():
        assert leaks_no_secret(request["spec"], request["environment"]), request["job_id"]

    # Hold every accepted job but a sample of CPU jobs that keep their checkpoints in ckpts/
    # (the request `trainsup hold` drops, without 400 more searches of the inbox).
    runnable = [job_id for job_id, request in submissions.items()
                if request["spec"]["gpus"] == 0 and request["spec"]["checkpoint_dir"].startswith(f"{ckpts}/")]
    sample = set(runnable[:len(TEMPLATES)] + rng.sample(runnable[len(TEMPLATES):], SAMPLE))
    held = [job_id for job_id in submissions if job_id not in sample]
    for job_id in held:
        drop(state / "inbox", {"kind": "control", "job_id": job_id, "action": "hold", "requested_at": time.time()})

    # 2. Mutated inbox requests, with a few files that are no requests at all.
    base_submit = submissions[runnable[0]]
    base_submit = {**base_submit, "job_id": "0000fade",
                   "spec": {**base_submit["spec"], "gpus": 1, "checkpoint_dir": str(ckpts / "inbox")}}
    control_target = next(job_id for job_id in runnable if job_id not in sample)
    base_control = {"kind": "control", "job_id": control_target, "action": "hold", "requested_at": time.time()}
    inbox = state / "inbox"
    mutated: dict[str, bytes] = {}
    for index in range(INBOX_FILES):
        base = base_submit if index % 3 else base_control
        name = f"99999999999999999999-fuzz-{index:04d}.json"
        raw = mutate_request(rng, base, root)
        (inbox / name).write_bytes(raw)
        mutated[name] = raw
    outside = root / "outside.json"
    outside.write_text(json.dumps(base_submit))
    (inbox / "99999999999999999999-link.json").symlink_to(outside)
    os.mkfifo(inbox / "99999999999999999999-fifo.json")
    (inbox / "99999999999999999999-dir.json").mkdir()
    traversal = {**base_submit, "job_id": "../../../../tmp/x"}
    (inbox / "99999999999999999999-traversal.json").write_text(json.dumps(traversal))
    literal_target = (state / "jobs" / "../../../../tmp/x").resolve()
    literal_existed = literal_target.exists()
    from trainsup.jobs.requests import REQUEST_ADAPTER

    def valid(raw: bytes) -> bool:
        try:
            REQUEST_ADAPTER.validate_json(raw)
            return True
        except ValueError:
            return False

    expected_valid = {name for name, raw in mutated.items() if valid(raw)}
    assert 20 < len(expected_valid) < INBOX_FILES - 100, len(expected_valid)

    # 3. One real daemon takes the whole inbox.
    before = snapshot(tmp_path)
    daemon = DaemonProcess(env, work / "daemon.log")
    try:
        daemon.start()
        wait_for(lambda: not any(p.name.endswith(".json") for p in inbox.iterdir()), 60, 0.2, "an empty inbox")
        db = sqlite3.connect(f"file:{state / 'trainsup.db'}?mode=ro", uri=True)

        def sample_ended() -> bool:
            ended = db.execute("SELECT COUNT(DISTINCT job_id) FROM attempts WHERE ended_at IS NOT NULL"
                               f" AND job_id IN ({','.join('?' * len(sample))})", sorted(sample)).fetchone()[0]
            return ended == len(sample)

        wait_for(sample_ended, 60, 0.2, "a first attempt of every sampled job")
        assert daemon.process.poll() is None, (work / "daemon.log").read_text()[-3000:]
    finally:
        code = daemon.stop()
        kill_leftover_monitors(state)
    log = (work / "daemon.log").read_text()
    assert code == 0 and "Traceback" not in log, log[-3000:]

    # Every request was applied or set aside, as the request schema says.
    rejected = {path.name for path in (state / "inbox-rejected").iterdir()}
    ingested = {row[0] for row in db.execute("SELECT request FROM ingested")}
    for name in mutated:
        assert (name in ingested) == (name in expected_valid) != (name in rejected), name
    specials = {"99999999999999999999-link.json", "99999999999999999999-fifo.json", "99999999999999999999-dir.json",
                "99999999999999999999-traversal.json"}
    assert specials <= rejected
    assert log.count("set aside a bad inbox request") == len(rejected)

    # Jobs are what submit makes; the sample ran; nothing was written where it should not be.
    jobs = {row[0]: row for row in db.execute("SELECT id, environment_json, checkpoint_dir FROM jobs")}
    assert all(re.fullmatch(r"[0-9a-f]{8}", job_id) for job_id in jobs)
    assert set(accepted) <= set(jobs)
    for job_id, spec_json, environment in db.execute("SELECT id, spec_json, environment_json FROM jobs"):
        assert leaks_no_secret(json.loads(spec_json), json.loads(environment)), job_id
    reasons = dict(db.execute(f"SELECT job_id, reason FROM attempts WHERE number = 1 AND job_id IN "
                              f"({','.join('?' * len(sample))})", sorted(sample)).fetchall())
    assert not {job_id: reason for job_id, reason in reasons.items() if reason in ("spawn_failed", "lost")}, reasons
    started = {row[0] for row in
               db.execute("SELECT checkpoint_dir FROM jobs WHERE id IN (SELECT job_id FROM attempts)")}
    allowed = [str(state), str(ckpts), str(work), *started]
    after = snapshot(tmp_path)
    changed = [path for path, stamp in after.items() if before.get(path) != stamp]
    stray = [path for path in changed
             if not any(path == folder or path.startswith(folder + "/") for folder in allowed)]
    assert stray == [], stray
    assert not list(root.glob("escaped*")) and literal_target.exists() == literal_existed
    db.close()
