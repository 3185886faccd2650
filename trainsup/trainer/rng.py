"""Random number generator states in a form `torch.load(weights_only=True)` accepts."""

from __future__ import annotations

import random
from typing import Any

import torch

try:
    import numpy as np
except ImportError:  # numpy is optional
    np = None  # type: ignore[assignment]


_last_python: tuple[tuple[int, ...], torch.Tensor] | None = None  # Python's state at the last capture, as a tensor


def capture() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": _python_tensor(internal), "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_tensor(internal: tuple[int, ...]) -> torch.Tensor:
    """Python's generator state as a tensor; the last one again if the generator has not
    moved since (many training loops never draw from it). Nothing writes to these tensors."""
    global _last_python
    last = _last_python
    if last is not None and last[0] == internal:
        return last[1]
    tensor = _int64_tensor(internal)
    _last_python = (internal, tensor)
    return tensor


def _int64_tensor(values: tuple[int, ...]) -> torch.Tensor:
    """`torch.tensor(values, dtype=torch.int64)`, through numpy where it is present: a
    background save takes this in the loop's thread, and for Python's 625-int state
    `torch.tensor` takes 45-90 µs here against 14 µs."""
    if np is None:
        return torch.tensor(values, dtype=torch.int64)
    return torch.from_numpy(np.fromiter(values, dtype=np.int64, count=len(values)))


def restore(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if np is not None and "numpy" in state:
        npy = state["numpy"]
        keys = npy["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            from trainsup.textlog import get_logger

            get_logger().warning(
                "the checkpoint has CUDA RNG states for %d devices, this run sees %d; CUDA RNG not restored",
                len(cuda), torch.cuda.device_count(),
            )
