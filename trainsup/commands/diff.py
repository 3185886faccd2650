"""`trainsup diff JOB1 JOB2`: what changed between two runs, from their run records."""

from __future__ import annotations

from typing import Any

from trainsup.commands.show import job_record
from trainsup.paths import StateDir


def job_diff(state: StateDir, first: str, second: str) -> dict[str, Any]:
    """Each job's newest record compared (`record.compare`); `JOB:N` picks attempt N."""
    from trainsup import record

    old, new = (job_record(state, *_job_and_attempt(key)) for key in (first, second))
    return {
        "old": {"id": old["id"], "name": old["name"], "attempt": old["attempt"]},
        "new": {"id": new["id"], "name": new["name"], "attempt": new["attempt"]},
        "changes": record.compare(old["record"], new["record"]),
    }


def _job_and_attempt(key: str) -> tuple[str, int | None]:
    job, _, number = key.rpartition(":")
    return (job, int(number)) if job and number.isdigit() and int(number) > 0 else (key, None)


def render(diff: dict[str, Any]) -> None:
    old, new = diff["old"], diff["new"]
    print(f"--- {old['name']} ({old['id']}) attempt {old['attempt']}")
    print(f"+++ {new['name']} ({new['id']}) attempt {new['attempt']}")
    changes = dict(diff["changes"])
    if not changes:
        print("no difference in what ran")
        return
    packages = changes.pop("packages", None)
    for field, (before, after) in changes.items():
        print(f"{field}: {_text(before)} → {_text(after)}")
    if packages:
        for name, version in packages["added"].items():
            print(f"package added: {name}=={version}")
        for name, version in packages["removed"].items():
            print(f"package removed: {name}=={version}")
        for name, (before, after) in packages["changed"].items():
            print(f"package changed: {name} {before} → {after}")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)
