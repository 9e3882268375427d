"""Tell the running daemon to reload its engines, and learn whether it took the new bundle.

The daemon is identified exactly, never by a word on a command line: ``edgeseg serve`` holds an
exclusive ``flock`` on its pid file for as long as it runs (``edgeseg.service.daemon``), so a pid
file nobody holds locked is stale whatever process now has that pid; and the process named must
also be ``edgeseg serve`` by its arguments (``is_serve_cmdline``). Only then is it sent SIGHUP,
whose default action would end any other process.

After each reload (and once at start) the daemon writes its verdict beside the pid file
(``verdict_path``): ``{"pid", "reloads", "ok", "message"}``, replaced whole by rename. A caller
that signals it can wait (bounded) for the verdict on its own signal (``await_verdict``).

A daemon that does not run is not an error (the new bundle is simply used at its next start),
and neither is a stale or unreadable pid file. Only a daemon that runs but cannot be signalled
(another user's) leaves the switch unapplied, and ``DaemonNotice.applied`` says so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, List, Optional

_PROC = Path("/proc")
#: The kernel's largest pid when /proc does not say (PID_MAX_LIMIT on 64-bit Linux).
_PID_MAX_DEFAULT: Final = 1 << 22
#: Module names that ``python -m`` runs as the edgeseg command line.
_MODULES: Final = ("edgeseg", "edgeseg.cli", "edgeseg.__main__")
#: How long ``activate`` waits for the daemon's verdict on a reload: a TensorRT engine's load and
#: self-test on a Jetson take seconds, a cold one tens of seconds.
VERDICT_WAIT_S: Final = 60.0
_POLL_S: Final = 0.1


@dataclass(frozen=True)
class DaemonNotice:
    """What became of the reload request: one line for the user, and whether it took effect."""

    message: str
    pid: Optional[int] = None
    signalled: bool = False
    #: False only when a daemon runs and still uses the old bundle.
    applied: bool = True
    #: The daemon's verdict count before the signal (None: it writes no verdicts).
    verdicts_before: Optional[int] = None


@dataclass(frozen=True)
class Verdict:
    """The daemon's account of its last reload (``reloads`` counts attempts, 0 at start)."""

    pid: int
    reloads: int
    ok: bool
    message: str


def verdict_path(pid_file: str | Path) -> Path:
    path = Path(pid_file)
    return path.with_name(path.name + ".reload.json")


def write_verdict(pid_file: str | Path, reloads: int, ok: bool, message: str) -> None:
    """The daemon's side: record this process's verdict on reload number ``reloads`` atomically."""
    path = verdict_path(pid_file)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    doc = {"pid": os.getpid(), "reloads": reloads, "ok": ok, "message": message.splitlines()[0] if message else ""}
    tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_verdict(pid_file: str | Path) -> Optional[Verdict]:
    """The last verdict written, None when there is none or it cannot be read."""
    try:
        doc = json.loads(verdict_path(pid_file).read_text(encoding="utf-8"))
        return Verdict(int(doc["pid"]), int(doc["reloads"]), bool(doc["ok"]), str(doc["message"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def await_verdict(pid_file: str | Path, notice: DaemonNotice, wait_s: float = VERDICT_WAIT_S) -> Optional[Verdict]:
    """The daemon's verdict on the reload ``notice`` asked for; None when it writes none in time."""
    if not notice.signalled or notice.verdicts_before is None:
        return None
    end = time.monotonic() + wait_s
    while True:
        v = read_verdict(pid_file)
        if v is not None and v.pid == notice.pid and v.reloads > notice.verdicts_before:
            return v
        if time.monotonic() >= end or not _alive(notice.pid):
            return None
        time.sleep(_POLL_S)


def _alive(pid: Optional[int]) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_max() -> int:
    try:
        return int((_PROC / "sys" / "kernel" / "pid_max").read_text().strip())
    except (OSError, ValueError):
        return _PID_MAX_DEFAULT


def _read_pid(pid_file: Path) -> int | str:
    """The pid in the file, or why there is none."""
    try:
        text = pid_file.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return f"no daemon running (no pid file {pid_file})"
    except OSError as exc:
        return f"no daemon signalled: pid file {pid_file} cannot be read ({exc.strerror})"
    first = text.split()[0] if text else ""
    if not first.isascii() or not first.isdigit() or len(first) > 10 or not 1 < int(first) <= _pid_max():
        return f"no daemon signalled: pid file {pid_file} does not hold a process id ({first[:20]!r})"
    return int(first)


def _locked_by_someone(pid_file: Path) -> Optional[bool]:
    """Whether a live process holds the daemon's flock on ``pid_file`` (None: cannot tell)."""
    try:
        fd = os.open(pid_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return True if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)  # held for an instant only: the daemon retries its own lock
        return False
    finally:
        os.close(fd)


def _argv(pid: int) -> Optional[List[str]]:
    """The process's arguments, None where /proc cannot tell (it exited, or it is hidden)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode("utf-8", errors="replace") for a in raw.split(b"\0") if a]


def is_serve_cmdline(argv: List[str]) -> bool:
    """``argv`` runs ``edgeseg serve``: the edgeseg script (or ``python -m edgeseg``) whose first
    argument that is not an option is ``serve``. A word ``edgeseg`` elsewhere (an editor on
    ``edgeseg.yaml``, a shell loop) is not enough."""
    rest: Optional[List[str]] = None
    for i, arg in enumerate(argv):
        if PurePosixPath(arg).name == "edgeseg" and (i == 0 or not argv[i - 1] == "-m"):
            rest = argv[i + 1:]
            break
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] in _MODULES:
            rest = argv[i + 2:]
            break
        if i > 0 and not arg.startswith("-"):  # the interpreter's script is something else
            return False
    if rest is None:
        return False
    words = [a for a in rest if not a.startswith("-")]
    return bool(words) and words[0] == "serve"


def reload_daemon(pid_file: str | Path, sig: signal.Signals = signal.SIGHUP) -> DaemonNotice:
    """Send ``sig`` to the daemon of ``pid_file``; never raises for a daemon that is not there."""
    path = Path(pid_file)
    pid = _read_pid(path)
    if isinstance(pid, str):
        return DaemonNotice(f"{pid}; the active bundle is used at its next start")
    stale = f"stale pid file {path}"
    locked = _locked_by_someone(path)
    if locked is False:
        return DaemonNotice(f"no daemon running ({stale}: no edgeseg serve holds it); "
                            "the active bundle is used at its next start", pid)
    argv = _argv(pid)
    if argv is None:
        if not _alive(pid):
            return DaemonNotice(f"no daemon running ({stale}: process {pid} has exited); "
                                "the active bundle is used at its next start", pid)
        return DaemonNotice(
            f"daemon not signalled: process {pid} of pid file {path} cannot be identified (its /proc entry is "
            f"hidden); restart the daemon or reload it as its user (kill -HUP {pid})", pid, applied=False,
        )
    if not is_serve_cmdline(argv):
        return DaemonNotice(
            f"no daemon signalled: pid file {path} names process {pid} ({' '.join(argv)[:60]!r}), which is not "
            f"edgeseg serve ({stale}); the active bundle is used at the daemon's next start", pid,
        )
    if locked is None:
        return DaemonNotice(
            f"daemon not signalled: pid file {path} cannot be opened to check that process {pid} holds it; "
            f"reload it as its user (kill -HUP {pid}) or restart it", pid, applied=False,
        )
    before = read_verdict(path)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return DaemonNotice(f"no daemon running ({stale}: process {pid} has exited); "
                            "the active bundle is used at its next start", pid)
    except PermissionError:
        return DaemonNotice(
            f"daemon (pid {pid}) not signalled: permission denied; it still runs the old bundle "
            f"until reloaded (run as its user: kill -HUP {pid}) or restarted",
            pid, applied=False,
        )
    counted = before.reloads if before is not None and before.pid == pid else None
    return DaemonNotice(f"daemon (pid {pid}) signalled to reload ({sig.name})", pid, signalled=True,
                        verdicts_before=counted)
