"""The one seam every platform probe goes through: a root directory, a command runner, an importer.

``Host()`` is this machine. ``recorded_host(dir)`` is a device recorded as files: the directory is
its root (``etc/nv_tegra_release``, ``proc/device-tree/model``, ``var/lib/dpkg/status`` ...) and
three small JSON files stand for what cannot be a file:

- ``host.json``: ``{"machine": "aarch64", "python_version": "3.8.10"}`` (the interpreter's facts);
- ``commands.json``: command line (words joined by single spaces) -> ``{"rc": 0, "stdout": "..."}``;
  a key ending in ``*`` answers every command line that starts with the rest; a command that is
  not recorded behaves as one that is not installed (exit code 127);
- ``modules.json``: module name -> ``null`` (not importable) or its attributes. A key ending in
  ``()`` is a function returning the value (whatever its arguments), an object value is a nested
  namespace; a module that is not listed is not importable either.

That keeps the probes honest about the device they describe (a JetPack 5 Orin, a JetPack 6 Orin
Nano) and lets support replay a device's recording with ``edgeseg doctor --root DIR``.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

#: Seconds any probe command may take (nvpmodel, timedatectl, nvcc): a hung tool must not hang
#: the field engineer's first command.
COMMAND_TIMEOUT_S = 10.0
#: Exit codes the runner reports for a command that could not run, as a shell would.
NOT_FOUND = 127
TIMED_OUT = 124
NOT_EXECUTABLE = 126
#: PATH of a recorded device (root's sudo ``secure_path``, which leaves out /usr/local/cuda/bin).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class CommandResult:
    """What a command printed on stdout and how it exited (127: not installed)."""

    returncode: int
    stdout: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


Runner = Callable[[Sequence[str]], CommandResult]
Importer = Callable[[str], Any]


def run_command(argv: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S) -> CommandResult:
    """Run ``argv`` without a shell; a missing, unrunnable or hung command is a result, not an error."""
    try:
        done = subprocess.run(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True, timeout=timeout_s, check=False,
        )
    except FileNotFoundError:
        return CommandResult(NOT_FOUND)
    except subprocess.TimeoutExpired:
        return CommandResult(TIMED_OUT)
    except OSError as exc:  # permission denied, exec format error
        return CommandResult(NOT_EXECUTABLE, str(exc))
    return CommandResult(done.returncode, done.stdout or "")


@dataclass(frozen=True)
class Host:
    """Where probes look. Paths are device paths (``/etc/...``), read under ``root``."""

    root: Path = Path("/")
    run: Runner = run_command
    import_module: Importer = importlib.import_module
    machine: str = field(default_factory=platform.machine)
    python_version: str = field(default_factory=lambda: platform.python_version())
    search_path: str = field(default_factory=lambda: os.environ.get("PATH", DEFAULT_PATH))

    @property
    def recorded(self) -> bool:
        return self.root != Path("/")

    def path(self, device_path: str | Path) -> Path:
        """``device_path`` (absolute on the device) under this host's root."""
        text = str(device_path)
        return self.root / text.lstrip("/") if text.startswith("/") else self.root / text

    def read_text(self, device_path: str | Path) -> Optional[str]:
        """The file's text, or None when it is absent or unreadable (a probe then says so)."""
        try:
            return self.path(device_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def which(self, name: str, extra_dirs: Sequence[str] = ()) -> Optional[str]:
        """The device path of executable ``name`` in PATH or ``extra_dirs``, or None."""
        for d in [*self.search_path.split(os.pathsep), *extra_dirs]:
            if d and self.path(Path(d) / name).is_file():
                return str(Path(d) / name)
        return None

    def try_import(self, name: str) -> Optional[Any]:
        """The module, or None when it cannot be imported (missing, or broken by its own imports)."""
        try:
            return self.import_module(name)
        except ImportError:
            return None
        except Exception:  # a binding that fails at import (numpy ABI, missing .so) is "not usable"
            return None


# -- a recorded device ---------------------------------------------------------------------------


def _fake(value: Any) -> Any:
    """JSON as the objects a probe meets: ``{"f()": v}`` -> ``obj.f(...) == v``, dicts as namespaces."""
    if isinstance(value, dict):
        attrs: Dict[str, Any] = {}
        for key, item in value.items():
            if key.endswith("()"):
                result = _fake(item)
                attrs[key[:-2]] = lambda *_a, _r=result, **_k: _r
            else:
                attrs[key] = _fake(item)
        return SimpleNamespace(**attrs)
    if isinstance(value, list):
        return tuple(_fake(v) for v in value)
    return value


class _Recording:
    """Answers of a recorded device: commands and modules."""

    def __init__(self, commands: Mapping[str, Any], modules: Mapping[str, Any]):
        self.commands = dict(commands)
        self.modules = dict(modules)

    def run(self, argv: Sequence[str]) -> CommandResult:
        line = " ".join(argv)
        answer = self.commands.get(line)
        if answer is None:
            prefixes = [k for k in self.commands if k.endswith("*") and line.startswith(k[:-1])]
            answer = self.commands[max(prefixes, key=len)] if prefixes else None
        if answer is None:
            return CommandResult(NOT_FOUND)
        return CommandResult(int(answer.get("rc", 0)), str(answer.get("stdout", "")))

    def import_module(self, name: str) -> Any:
        if self.modules.get(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r} (recorded)", name=name)
        return _fake(self.modules[name])


def _load_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON recording ({exc})") from None


def recorded_host(directory: str | Path) -> Host:
    """A device recorded under ``directory`` (see the module docstring); ValueError when unusable."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected a recorded device root)")
    facts = _load_json(root / "host.json", {})
    recording = _Recording(_load_json(root / "commands.json", {}), _load_json(root / "modules.json", {}))
    return Host(
        root=root.resolve(),
        run=recording.run,
        import_module=recording.import_module,
        machine=str(facts.get("machine", "unknown")),
        python_version=str(facts.get("python_version", "")),
        search_path=str(facts.get("path", DEFAULT_PATH)),
    )

