"""Install the daemon as a systemd service: render the unit, write it, enable it.

Two shapes (see systemd/ and docs/service.md):

    user    ~/.config/systemd/user/trainsup.service   `systemctl --user`, needs lingering
    system  /etc/systemd/system/trainsup@.service     enabled as trainsup@<user>.service

`systemctl` is reached only through an injectable runner, so tests (and `--dry-run`)
never touch the service manager.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trainsup.durable import write_atomic
from trainsup.errors import ServiceError
from trainsup.paths import StateDir

Scope = Literal["user", "system"]
SystemctlRunner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]

PLACEHOLDER = "@TRAINSUP@"
UNITS_SOURCE = Path(__file__).resolve().parent / "systemd"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
LINGER_DIR = Path("/var/lib/systemd/linger")
WANTS_DIR = {"user": "default.target.wants", "system": "multi-user.target.wants"}
RESTART_STEPS_SINCE = 254  # RestartSteps= and RestartMaxDelaySec= appeared in systemd 254
_STEP_KEYS = ("RestartSteps=", "RestartMaxDelaySec=")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]*\$?", re.IGNORECASE)
_UNIT_SAFE = re.compile(r"[A-Za-z0-9/_.+:,=-]+")


@dataclass(frozen=True)
class InstallResult:
    unit_name: str
    unit_path: Path
    content: str
    commands: tuple[tuple[str, ...], ...]  # systemctl argument lists, run or (dry run) to run
    warnings: tuple[str, ...]
    dry_run: bool


def run_systemctl(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, timeout=120, check=False
    )


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def user_unit_dir(environ: Mapping[str, str] = os.environ) -> Path:
    config = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def template_file(scope: Scope) -> str:
    return "trainsup.service" if scope == "user" else "trainsup@.service"


def unit_name(scope: Scope, user: str) -> str:
    return "trainsup.service" if scope == "user" else f"trainsup@{user}.service"


def linger_enabled(user: str, linger_dir: Path = LINGER_DIR) -> bool:
    return (linger_dir / user).exists()


def find_executable(
    *,
    python: str = sys.executable,
    argv0: str = sys.argv[0],
    which: Callable[[str], str | None] = shutil.which,
) -> Path:
    """The `trainsup` command of *this* installation, as an absolute path.

    The one beside the running interpreter comes first (a virtualenv's bin/), then
    the command we were started as, then whatever PATH finds. Symlinks are kept:
    a venv's path is what stays valid across interpreter upgrades.
    """
    candidates = [Path(python).parent / "trainsup"] if python else []
    if argv0 and Path(argv0).name == "trainsup":
        candidates.append(Path(argv0))
    if found := which("trainsup"):
        candidates.append(Path(found))
    for candidate in candidates:
        path = Path(os.path.abspath(candidate))
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServiceError("cannot find the `trainsup` command of this installation; reinstall the package")


def systemd_version(systemctl: SystemctlRunner) -> int | None:
    try:
        result = systemctl(["--version"])
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"systemd (\d+)", result.stdout or "")
    return int(match.group(1)) if match and result.returncode == 0 else None


def render_unit(
    template: str,
    executable: Path,
    *,
    systemd_version: int | None = None,
    environment: Mapping[str, str] | None = None,
) -> str:
    """The unit text with ExecStart= pointing at `executable`.

    On systemd >= 254 the commented-out growing-delay keys are switched on; extra
    `environment` lands as Environment= lines right after ExecStart=.
    """
    if f"ExecStart={PLACEHOLDER}" not in template:
        raise ServiceError(f"the unit template has no ExecStart={PLACEHOLDER} line to fill in")
    lines = []
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            line = line.replace(PLACEHOLDER, _exec_arg(str(executable)))
        elif systemd_version and systemd_version >= RESTART_STEPS_SINCE and line.startswith(
            tuple("#" + key for key in _STEP_KEYS)
        ):
            line = line[1:]
        lines.append(line)
        if line.startswith("ExecStart="):
            lines.extend(
                f"Environment={_quote(f'{key}={value}')}" for key, value in (environment or {}).items()
            )
    return "\n".join(lines) + "\n"


def install(
    scope: Scope,
    user: str | None,
    *,
    unit_dir: Path | None = None,
    systemctl: SystemctlRunner = run_systemctl,
    dry_run: bool = False,
    executable: Path | None = None,
    state_home: Path | None = None,
    linger_dir: Path = LINGER_DIR,
    units_source: Path = UNITS_SOURCE,
) -> InstallResult:
    """Write the unit for `scope`, reload systemd and `enable --now` it.

    `user` is whom the daemon runs as: for a user unit, yourself (None means
    that); for the system template, None means the sudo caller, else yourself.
    `state_home` pins TRAINSUP_HOME in the unit; for a user unit it defaults to
    the state dir of this shell when TRAINSUP_HOME or XDG_STATE_HOME is set, so
    the daemon and `trainsup submit` agree.
    """
    warnings: list[str] = []
    me = current_user()
    if scope == "user":
        if user not in (None, me):
            raise ServiceError(
                f"a user unit runs as yourself, not {user}; use the system scope to run as {user}"
            )
        user = me
        if os.geteuid() == 0 and os.environ.get("SUDO_USER") not in (None, "root"):
            sudo_user = os.environ["SUDO_USER"]
            warnings.append(f"this installs a user unit for root, not {sudo_user}; run it without sudo for yourself")
        if state_home is None and ({"TRAINSUP_HOME", "XDG_STATE_HOME"} & os.environ.keys()):
            state_home = StateDir.from_env().root
    elif scope == "system":
        user = user or os.environ.get("SUDO_USER") or me
    else:
        raise ServiceError(f"unknown service scope {scope!r}; use user or system")
    account = _account(user)

    exe = executable or find_executable()
    template_path = units_source / template_file(scope)
    try:
        template = template_path.read_text()
    except FileNotFoundError:
        raise ServiceError(
            f"this installation has no unit template at {template_path}; reinstall trainsup"
        ) from None
    except OSError as exc:
        raise ServiceError(f"cannot read the unit template {template_path}: {exc.strerror}") from exc
    content = render_unit(
        template,
        exe,
        systemd_version=systemd_version(systemctl),
        environment={"TRAINSUP_HOME": str(state_home)} if state_home else None,
    )

    target_dir = unit_dir or (user_unit_dir() if scope == "user" else SYSTEM_UNIT_DIR)
    unit_path = target_dir / template_file(scope)
    name = unit_name(scope, user)
    prefix = ("--user",) if scope == "user" else ()
    commands = ((*prefix, "daemon-reload"), (*prefix, "enable", "--now", name))

    if scope == "user" and not linger_enabled(user, linger_dir):
        warnings.append(
            f"lingering is off for {user}, so the daemon and its jobs stop when you log out; "
            f"run `loginctl enable-linger {user}`"
        )
    if scope == "system":
        if account.pw_uid == 0:
            warnings.append(
                "the daemon and every job will run as root without capabilities (the unit's sandbox drops them), "
                "so they cannot touch other users' files; `--as USER` runs them as a normal user"
            )
        elif closed := _closed_dir(exe, account):
            warnings.append(f"{user} may not be able to run {exe}, because {closed} is closed to them")
    if _differs(unit_path, content):
        warnings.append(
            f"{unit_path} is replaced; if the service is running, "
            f"`systemctl {' '.join(prefix + ('restart', name))}` applies the new unit"
        )

    if not dry_run:
        _write_unit(unit_path, content)
        for args in commands:
            _systemctl(systemctl, args, unit_path)
    return InstallResult(name, unit_path, content, commands, tuple(warnings), dry_run)


def _account(user: str) -> pwd.struct_passwd:
    if not _USER_NAME.fullmatch(user):
        raise ServiceError(f"{user!r} is not a user name trainsup can put in a unit name")
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise ServiceError(f"there is no user named {user} on this machine") from None


def _write_unit(path: Path, content: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, content.encode())
        os.chmod(path, 0o644)
    except PermissionError:
        raise ServiceError(f"no permission to write {path}; the system scope needs root (sudo)") from None
    except OSError as exc:
        raise ServiceError(f"cannot write {path}: {exc.strerror}") from exc


def _systemctl(systemctl: SystemctlRunner, args: Sequence[str], unit_path: Path) -> None:
    shown = " ".join(("systemctl", *args))
    try:
        result = systemctl(args)
    except FileNotFoundError:
        raise ServiceError(f"systemctl is not installed; {unit_path} is written but not enabled") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"`{shown}` could not run ({exc}); {unit_path} is written") from exc
    if result.returncode != 0:
        reason = next((ln.strip() for ln in (result.stderr or "").splitlines() if ln.strip()), "")
        reason = reason or f"exit status {result.returncode}"
        raise ServiceError(f"`{shown}` failed ({reason}); {unit_path} is written")


def _differs(path: Path, content: str) -> bool:
    try:
        return path.read_text() != content
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError):
        return True


def _closed_dir(path: Path, account: pwd.struct_passwd) -> Path | None:
    """The first directory on the way to `path` (or `path` itself) that `account` cannot enter or run."""
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for step in (*reversed(path.parents), path):
        try:
            st = step.stat()
        except OSError:
            return step
        if st.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return step
    return None


def _exec_arg(path: str) -> str:
    """`path` as ExecStart='s command: specifiers escaped, quoted if needed.

    systemd does not expand $VARIABLES in the command itself, only in its arguments.
    """
    path = path.replace("%", "%%")
    return path if _UNIT_SAFE.fullmatch(path.replace("%%", "")) else _quote_raw(path)


def _quote(assignment: str) -> str:
    return _quote_raw(assignment.replace("%", "%%"))


def _quote_raw(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
