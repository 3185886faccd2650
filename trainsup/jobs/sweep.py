"""A sweep: one job file, one job per combination of its `sweep:` matrix.

    sweep: {model: [vgg11, resnet18], resolution: [224, 256, 320]}   →  6 jobs

Pure (no I/O, stdlib only): `expand()` turns the job file's mapping into one mapping per
combination, with `{key}` placeholders replaced in `name`, `command`, `env` values and
`checkpoint_dir` (`{{` and `}}` stand for literal braces there), and `sweep:` replaced by
the combination (`{"name": <the sweep's name>, "values": {...}}`), which `JobSpec.sweep`
keeps. Each mapping is then validated as any job file is.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from trainsup.errors import SpecError

MAX_COMBINATIONS = 1000
MAX_NAME = 100
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")

Scalar = str | int | float | bool
Combination = dict[str, Scalar]


def text(value: Scalar) -> str:
    """A value as it appears in the job: `true`/`false` for booleans, as YAML writes them."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def combinations(matrix: Any, source: str) -> list[Combination]:
    """Every combination of the matrix, in the order its keys and values are written.

    Raises:
        SpecError: the matrix is not a mapping of keys to non-empty lists of distinct scalars.
    """
    where = f"{source}: field 'sweep'"
    if not isinstance(matrix, dict) or not matrix:
        raise SpecError(f"{where}: must map each key to a list of values, e.g. {{model: [vgg11, resnet18]}}.")
    for key, values in matrix.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise SpecError(f"{where}: {str(key)[:40]!r} is not a key; use letters, digits and '_'.")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: the values of {key} must be a non-empty list.")
        if not all(isinstance(v, (str, int, float)) for v in values):
            raise SpecError(f"{where}: the values of {key} must be strings, numbers or booleans.")
        if len({text(v) for v in values}) != len(values):
            raise SpecError(f"{where}: the values of {key} repeat one another.")
    count = 1
    for values in matrix.values():
        count *= len(values)
    if count > MAX_COMBINATIONS:
        raise SpecError(f"{where}: {count} combinations are more than the {MAX_COMBINATIONS} a sweep may have.")
    keys = list(matrix)
    return [dict(zip(keys, combo)) for combo in itertools.product(*matrix.values())]


def placeholders(template: str) -> list[str]:
    """The keys `template` names as `{key}`, in order."""
    return [m[1] for m in _TOKEN.finditer(template) if m[1] is not None]


def substitute(template: str, values: Combination, where: str) -> str:
    """`template` with each `{key}` replaced by its value, `{{`/`}}` by a brace.

    Raises:
        SpecError: a placeholder names no sweep key, or a brace stands alone.
    """
    def replace(match: re.Match[str]) -> str:
        token, key = match[0], match[1]
        if token in ("{{", "}}"):
            return token[0]
        if key is None or key not in values:
            shown = token if key is None else f"{{{key}}}"
            raise SpecError(f"{where}: the placeholder {shown} names no sweep key (the keys are "
                            f"{', '.join(values)}); write {{{{ and }}}} for a literal brace.")
        return text(values[key])
    return _TOKEN.sub(replace, template)


def sweep_name(template: str, source: str) -> str:
    """The sweep's own name: `name` without its placeholders (`cls-{model}` → `cls`), else the file's stem."""
    bare = _TOKEN.sub(lambda m: m[0][0] if m[0] in ("{{", "}}") else "", template)
    bare = re.sub(r"[-_.]{2,}", "-", _NOT_IN_NAME.sub("_", bare)).strip("-_.")
    return bare[:MAX_NAME] or _NOT_IN_NAME.sub("_", Path(source).stem)[:MAX_NAME].lstrip(".-") or "sweep"


def job_name(template: str, values: Combination, where: str) -> str:
    """The name of one combination's job: the placeholders filled in (characters a name cannot
    hold become `_`) and each key the name does not use appended as `-key_value`."""
    used = set(placeholders(template))
    safe = {key: _NOT_IN_NAME.sub("_", text(value)) for key, value in values.items()}
    name = substitute(template, safe, where)
    for key, value in safe.items():
        if key not in used:
            name += f"-{key}_{value}"
    return name


def describe(values: Combination) -> str:
    """`model=vgg11, resolution=224`."""
    shown = {key: "".join(c if c.isprintable() else repr(c)[1:-1] for c in text(value)) for key, value in values.items()}
    return ", ".join(f"{key}={value[:40]}" for key, value in shown.items())


def expand(data: dict[str, Any], source: str) -> list[tuple[Combination, dict[str, Any]]]:
    """One job file mapping per combination of `data["sweep"]`, with its placeholders filled in.

    Raises:
        SpecError: a bad matrix, a placeholder that names no key, or two combinations with one name.
    """
    matrix = data.get("sweep")
    template = data.get("name")
    name_of_sweep = sweep_name(template if isinstance(template, str) else "", source)
    expanded, names = [], {}
    for values in combinations(matrix, source):
        job = {key: value for key, value in data.items() if key != "sweep"}
        if isinstance(template, str):
            job["name"] = job_name(template, values, f"{source}: field 'name'")
            if len(job["name"]) > MAX_NAME:
                raise SpecError(f"{source}: field 'name': the name of the job for {describe(values)} is longer "
                                f"than {MAX_NAME} characters; put shorter placeholders in name, e.g. run-{{model}}.")
            if job["name"] in names:
                raise SpecError(f"{source}: field 'name': {describe(names[job['name']])} and {describe(values)} "
                                f"both give the job name {job['name']}; name them apart with placeholders.")
            names[job["name"]] = values
        command = data.get("command")
        if isinstance(command, str):
            job["command"] = substitute(command, values, f"{source}: field 'command'")
        elif isinstance(command, list):
            job["command"] = [substitute(arg, values, f"{source}: field 'command'") if isinstance(arg, str) else arg
                              for arg in command]
        env = data.get("env")
        if isinstance(env, dict):
            job["env"] = {key: substitute(value, values, f"{source}: field 'env'") if isinstance(value, str) else value
                          for key, value in env.items()}
        if isinstance(data.get("checkpoint_dir"), str):
            job["checkpoint_dir"] = substitute(data["checkpoint_dir"], values, f"{source}: field 'checkpoint_dir'")
        job["sweep"] = {"name": name_of_sweep, "values": values}
        expanded.append((values, job))
    return expanded
