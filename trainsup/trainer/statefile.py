"""`state.pt`: what is saved for the model, optimizer, scheduler, scaler and extras,
and how it is put back.

Everything in it loads with `torch.load(weights_only=True)`: tensors, dicts, lists,
numbers, strings. Progress and RNG states are handled by the session.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainsup.trainer.errors import ArchitectureMismatchError
from trainsup.textlog import get_logger
from trainsup.trainer.outcome import is_out_of_memory

STATE_FILE = "state.pt"
STATE_FORMAT = 1
_PARTS = ("model", "optimizer", "scheduler", "scaler")


@dataclass
class Components:
    """The objects whose state a checkpoint carries."""

    model: torch.nn.Module | None = None
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_stateful(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))


def collect(components: Components) -> dict[str, Any]:
    """The components' states, sharing storage with the live tensors."""
    state: dict[str, Any] = {"format": STATE_FORMAT}
    for part in _PARTS:
        obj = getattr(components, part)
        if obj is not None:
            state[part] = obj.state_dict()
    state["extra"] = {
        "plain": {k: v for k, v in components.extra.items() if not is_stateful(v)},
        "stateful": {k: v.state_dict() for k, v in components.extra.items() if is_stateful(v)},
    }
    return state


def snapshot(obj: Any, buffers: dict[tuple[Any, ...], torch.Tensor] | None = None,
             _path: tuple[Any, ...] = (), *, defer: set[int] | None = None,
             pending: list[tuple[torch.Tensor, torch.Tensor, int]] | None = None) -> Any:
    """A deep copy with every tensor copied to CPU memory, for a save in the background.

    `buffers` keeps the CPU copies between saves: copying into memory that is already
    mapped (and pinned, for CUDA tensors) is several times faster than allocating it.
    Reuse is safe because a snapshot is only taken once the previous save is durable.
    A CPU tensor whose storage is in `defer` (`deferred.owned_storages`) is not copied
    now: its buffer is returned and (tensor, buffer, version) appended to `pending`.
    """
    if isinstance(obj, torch.Tensor):
        if buffers is None or not obj.is_contiguous() or obj.layout != torch.strided:
            return obj.detach().to("cpu", copy=True)
        buffer = buffers.get(_path)
        if buffer is None or buffer.shape != obj.shape or buffer.dtype != obj.dtype:
            pinned = obj.is_cuda and torch.cuda.is_available()
            buffer = buffers[_path] = torch.empty_like(obj, device="cpu", pin_memory=pinned)
        if (defer and pending is not None and obj.device.type == "cpu"
                and obj.untyped_storage().data_ptr() in defer):
            pending.append((obj, buffer, obj._version))
        else:
            buffer.copy_(obj.detach(), non_blocking=obj.is_cuda)
        return buffer
    if isinstance(obj, dict):
        copied = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for key, value in obj.items():
            copied[key] = snapshot(value, buffers, (*_path, key), defer=defer, pending=pending)
        if hasattr(obj, "_metadata"):
            copied._metadata = _copy_metadata(obj._metadata)  # type: ignore[attr-defined]
        return copied
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v, buffers, (*_path, i), defer=defer, pending=pending) for i, v in enumerate(obj))
    if type(obj) in _IMMUTABLE:
        return obj
    return copy.deepcopy(obj)


_IMMUTABLE = frozenset({int, float, bool, str, bytes, type(None), complex})


def _copy_metadata(metadata: Any) -> Any:
    """A module state_dict's `_metadata` ({prefix: {"version": 1}, ...}), copied.

    Its entries usually hold only numbers, where a copy of each dict is a deep copy;
    `copy.deepcopy` of the whole took as long as the rest of a small model's snapshot."""
    if not isinstance(metadata, OrderedDict):
        return copy.deepcopy(metadata)
    return OrderedDict(
        (key, dict(entry) if isinstance(entry, dict) and all(type(v) in _IMMUTABLE for v in entry.values())
         else copy.deepcopy(entry))
        for key, entry in metadata.items())


def load(path: Path, device: torch.device) -> dict[str, Any]:
    """Read a state file; never executes code from it (weights_only).

    Tensors saved from an accelerator load onto `device` (the model's); tensors saved
    from the CPU stay there, as in the run that saved them: AdamW keeps its `step`
    counters on the CPU, and one moved to the GPU syncs the host on every step and makes
    a resumed run differ from an uninterrupted one (found on an H200).
    """
    state = torch.load(path, map_location=restore_location(device), weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path.name} is not a trainsup state file of format {STATE_FORMAT}")
    return state


def restore_location(device: torch.device) -> Any:
    """`torch.load`'s map_location: CPU storages stay on the CPU, the rest go to `device`."""

    def restore(storage: Any, location: str) -> Any:
        return storage if location == "cpu" else torch.serialization.default_restore_location(storage, str(device))

    return restore


def check_architecture(model: torch.nn.Module, saved: dict[str, Any], checkpoint: str) -> None:
    """Raise one sentence naming the first key or shape that differs."""
    current = model.state_dict()
    problems: list[str] = []
    for key, tensor in saved.items():
        if key not in current:
            problems.append(f"'{key}' is in the checkpoint but not in the model")
        elif isinstance(tensor, torch.Tensor) and tuple(tensor.shape) != tuple(current[key].shape):
            problems.append(
                f"'{key}' has shape {tuple(current[key].shape)} in the model but {tuple(tensor.shape)} in the checkpoint"
            )
    problems.extend(f"'{key}' is in the model but not in the checkpoint" for key in current if key not in saved)
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise ArchitectureMismatchError(f"The model does not match checkpoint {checkpoint}: {problems[0]}{more}.")


def apply(components: Components, state: dict[str, Any], checkpoint: str) -> None:
    log = get_logger()
    if components.model is not None and "model" in state:
        check_architecture(components.model, state["model"], checkpoint)
    for part in _PARTS:
        obj = getattr(components, part)
        if obj is None and part in state:
            log.warning("checkpoint %s has a %s state but the session was given no %s; ignoring it", checkpoint, part, part)
        elif obj is not None and part not in state:
            log.warning("checkpoint %s has no %s state; the %s starts fresh", checkpoint, part, part)
        elif obj is not None:
            _load_state_dict(obj, state[part], f"The {part}", checkpoint)
    extra = state.get("extra", {})
    for key, value in extra.get("plain", {}).items():
        components.extra[key] = value
    for key, value in extra.get("stateful", {}).items():
        target = components.extra.get(key)
        if is_stateful(target):
            _load_state_dict(target, value, f"The extra '{key}'", checkpoint)
        else:
            log.warning("checkpoint %s has state for extra '%s' but the session has no such object", checkpoint, key)


def _load_state_dict(obj: Any, state: Any, what: str, checkpoint: str) -> None:
    """`obj.load_state_dict(state)`; a state that does not fit (a size mismatch, other
    parameter groups, missing keys) is an `ArchitectureMismatchError` of one sentence."""
    try:
        obj.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        if is_out_of_memory(exc):
            raise
        raise ArchitectureMismatchError(f"{what} does not match checkpoint {checkpoint}: {_first_problem(exc)}.") from exc


def _first_problem(exc: BaseException) -> str:
    """The line of a load_state_dict error that names the problem, without its headline."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Error(s) in loading state_dict")] or lines
    text = lines[0] if lines else exc.__class__.__name__
    return text.rstrip(".")[:300]
