"""Random number generator states in a form `torch.load(weights_only=True)` accepts."""

from __future__ import annotations

import ctypes
import random
from typing import Any

import torch

try:
    import numpy as np
except ImportError:  # numpy is optional
    np = None  # type: ignore[assignment]


_MT19937_STATE_BYTES = 624 * 4 + 4  # numpy's mt19937_state: uint32_t key[624]; int pos
_state_address: tuple[Any, int] | None = None  # numpy's global bit generator (kept alive) and its state's address
_last_numpy: tuple[bytes, dict[str, Any]] | None = None  # numpy's raw state at the last capture, and its record
_last_python: tuple[tuple[int, ...], torch.Tensor] | None = None  # Python's state at the last capture, as a tensor


def capture() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": _python_tensor(internal), "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if np is not None:
        state["numpy"] = _numpy_state()
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    """numpy's global (legacy) generator state; the last one again if the generator has
    not moved since: `np.random.get_state()` fills its key word by word in Python
    (40-90 µs here, in a background save's stall), and most training loops never draw
    from it. "Not moved" is its raw key and position unchanged: drawing a Gaussian moves
    them too, and only `np.random.set_state` with the same key and position but another
    cached Gaussian would go unseen."""
    global _last_numpy
    raw = _mt19937_bytes()  # before get_state: a draw in another thread between the two makes them differ next time
    last = _last_numpy
    if raw is not None and last is not None and last[0] == raw:
        return dict(last[1])
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
             "has_gauss": int(has_gauss), "cached": float(cached)}
    if raw is not None:
        _last_numpy = (raw, state)
    return dict(state)


def _mt19937_bytes() -> bytes | None:
    """The raw state (key, position) of numpy's global generator, read in one copy
    through its public ctypes interface; None unless it is the legacy MT19937."""
    get_bit_generator = getattr(np.random, "get_bit_generator", None)  # numpy >= 1.25
    if get_bit_generator is None:
        return None
    global _state_address
    bit_generator = get_bit_generator()
    if _state_address is None or _state_address[0] is not bit_generator:  # `.ctypes` is slow to build
        if type(bit_generator).__name__ != "MT19937":
            return None
        _state_address = (bit_generator, bit_generator.ctypes.state_address)
    return ctypes.string_at(_state_address[1], _MT19937_STATE_BYTES)


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
