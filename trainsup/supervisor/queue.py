"""Which queued job goes next, and why the others wait. Pure: no I/O, no clock reads.

The daemon asks `Queue.order()` for the queued jobs, highest priority first (ties in
submission order), and `Queue.verdict()` for each in turn: `try` (place its GPUs and
start it, then `take()` its share), `wait` with the reason `status` shows, or `fail`
with the reason the job ends with. A job that does not fit never blocks a lower one
that does.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from trainsup.jobs.groups import default_limit, group_of
from trainsup.units import format_size

if TYPE_CHECKING:
    from trainsup.jobs.spec import JobSpec


@dataclass(frozen=True)
class Ask:
    """What a queued job asks for before it may start."""

    id: str
    submitted_at: float
    priority: int = 0
    group: str | None = None  # resolved: `group_of()`
    gpus: int = 0
    cpus: float = 0.0
    memory: int = 0
    after: tuple[str, ...] = ()
    not_before: float | None = None

    @classmethod
    def of(cls, job_id: str, submitted_at: float, spec: JobSpec) -> "Ask":
        return cls(job_id, submitted_at, spec.priority, group_of(spec.group, spec.gpus), spec.gpus, spec.cpus,
                   spec.memory or 0, tuple(spec.after), spec.not_before)


@dataclass(frozen=True)
class Holding:
    """What a job with a live attempt holds: a place in its group, reserved CPUs and memory."""

    group: str | None
    cpus: float = 0.0
    memory: int = 0


@dataclass(frozen=True)
class Dependency:
    """A job another runs after, as the store has it; `state` None: no such job."""

    id: str
    name: str | None
    state: str | None


@dataclass(frozen=True)
class Machine:
    cpus: int
    memory: int


@dataclass(frozen=True)
class Verdict:
    action: Literal["try", "wait", "fail"]
    message: str = ""
    kind: str = "waiting"  # the event a `fail` is recorded with


TRY = Verdict("try")


class Queue:
    """The group places, CPUs and memory taken so far in one pass of the daemon."""

    def __init__(self, holdings: Iterable[Holding], limits: Mapping[str, int], machine: Machine):
        self.limits = limits
        self.machine = machine
        self.running: Counter[str] = Counter()
        self.cpus = 0.0
        self.memory = 0
        for holding in holdings:
            self._hold(holding.group, holding.cpus, holding.memory)

    @staticmethod
    def order(asks: Iterable[Ask]) -> list[Ask]:
        return sorted(asks, key=lambda a: (-a.priority, a.submitted_at, a.id))

    def limit(self, group: str) -> int:
        return self.limits.get(group) or default_limit(group, self.machine.cpus)

    def verdict(self, ask: Ask, dependencies: Mapping[str, Dependency], now: float) -> Verdict:
        if ask.cpus > self.machine.cpus:
            return Verdict("fail", f"it reserves {ask.cpus:g} CPUs; this machine has {self.machine.cpus}",
                           "unplaceable")
        if ask.memory > self.machine.memory:
            return Verdict("fail", f"it reserves {format_size(ask.memory)} of memory; this machine has"
                           f" {format_size(self.machine.memory)}", "unplaceable")
        unfinished = None
        for dep in (dependencies.get(key, Dependency(key, None, None)) for key in ask.after):
            if dep.state is None:
                return Verdict("fail", f"job {dep.id}, which it runs after, does not exist", "dependency_failed")
            if dep.state in ("failed", "cancelled"):
                return Verdict("fail", f"job {_label(dep)}, which it runs after, {dep.state}", "dependency_failed")
            if dep.state != "succeeded" and unfinished is None:
                unfinished = dep
        if unfinished is not None:
            return Verdict("wait", f"waiting for job {_label(unfinished)} to succeed")
        if ask.not_before is not None and now < ask.not_before:
            return Verdict("wait", f"not before {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ask.not_before))}")
        if ask.group is not None and self.running[ask.group] >= (limit := self.limit(ask.group)):
            return Verdict("wait", f"group {ask.group} is full ({self.running[ask.group]} of {limit} running)")
        if ask.cpus and self.cpus + ask.cpus > self.machine.cpus:
            free = max(0.0, self.machine.cpus - self.cpus)
            return Verdict("wait", f"waiting for {ask.cpus:g} CPUs ({free:g} of {self.machine.cpus} unreserved)")
        if ask.memory and self.memory + ask.memory > self.machine.memory:
            free = max(0, self.machine.memory - self.memory)
            return Verdict("wait", f"waiting for {format_size(ask.memory)} of memory"
                           f" ({format_size(free)} of {format_size(self.machine.memory)} unreserved)")
        return TRY

    def take(self, ask: Ask) -> None:
        """`ask` started: it holds its place from now on in this pass."""
        self._hold(ask.group, ask.cpus, ask.memory)

    def _hold(self, group: str | None, cpus: float, memory: int) -> None:
        if group is not None:
            self.running[group] += 1
        self.cpus += cpus
        self.memory += memory


def _label(dep: Dependency) -> str:
    return f"{dep.name} ({dep.id})" if dep.name else dep.id
