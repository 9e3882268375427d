"""Tell the running daemon to reload its engines: SIGHUP to the process named in its pid file.

A daemon that does not run is not an error (the new bundle is simply used at its next start),
and neither is a stale pid file. A pid file naming a live process that is not edgeseg (the pid
was reused after a crash) is never signalled: SIGHUP's default action would end that process.
Only a daemon that runs but cannot be signalled (another user's) leaves the switch unapplied,
and ``DaemonNotice.applied`` says so.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: A process is taken for the daemon only when its command line contains this.
DAEMON_MARK: Final = "edgeseg"
_PROC = Path("/proc")


@dataclass(frozen=True)
class DaemonNotice:
    """What became of the reload request: one line for the user, and whether it took effect."""

    message: str
    pid: int | None = None
    signalled: bool = False
    #: False only when a daemon runs and still uses the old bundle.
    applied: bool = True


def _read_pid(pid_file: Path) -> int | str:
    """The pid in the file, or why there is none."""
    try:
        text = pid_file.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return f"no daemon running (no pid file {pid_file})"
    except OSError as exc:
        return f"no daemon signalled: pid file {pid_file} cannot be read ({exc.strerror})"
    first = text.split()[0] if text else ""
    if not first.isdigit() or int(first) <= 1:
        return f"no daemon signalled: pid file {pid_file} does not hold a process id ({first[:20]!r})"
    return int(first)


def _cmdline(pid: int) -> str | None:
    """The process's command line, None where /proc cannot tell (not Linux, or hidden)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", errors="replace").strip()


def reload_daemon(pid_file: str | Path, sig: signal.Signals = signal.SIGHUP) -> DaemonNotice:
    """Send ``sig`` to the daemon of ``pid_file``; never raises for a daemon that is not there."""
    path = Path(pid_file)
    pid = _read_pid(path)
    if isinstance(pid, str):
        return DaemonNotice(f"{pid}; the active bundle is used at its next start")
    cmdline = _cmdline(pid)
    if cmdline is not None and DAEMON_MARK not in cmdline:
        return DaemonNotice(
            f"no daemon signalled: pid file {path} names process {pid} ({cmdline[:60]!r}), which is not "
            f"{DAEMON_MARK} (stale pid file); the active bundle is used at the daemon's next start",
            pid,
        )
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return DaemonNotice(
            f"no daemon running (stale pid file {path}: process {pid} has exited); "
            "the active bundle is used at its next start",
            pid,
        )
    except PermissionError:
        return DaemonNotice(
            f"daemon (pid {pid}) not signalled: permission denied; it still runs the old bundle "
            f"until reloaded (run as its user: kill -HUP {pid}) or restarted",
            pid, applied=False,
        )
    return DaemonNotice(f"daemon (pid {pid}) signalled to reload ({sig.name})", pid, signalled=True)
