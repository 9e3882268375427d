"""The runtime venv of ``make install``: what to run on this device, decided in Python, run in order.

On a Jetson the venv has to meet JetPack where it is (docs/jetson.md):

- made with the system Python and ``--system-site-packages``: JetPack's TensorRT bindings exist
  for that interpreter only, and its OpenCV is the one with GStreamer (CSI cameras);
- numpy pinned per JetPack (``<1.24`` on JetPack 5, ``<2`` on JetPack 6) through a pip
  constraints file, so no later ``pip install`` moves it;
- PyPI's ``opencv-python-headless`` (no GStreamer) not installed where the system's cv2 imports:
  edgeseg goes in with ``--no-deps``, then the runtime requirements of setup.py without OpenCV;
- pycuda compiled against the device's CUDA: nvcc from PATH or ``/usr/local/cuda/bin`` (sudo's
  PATH leaves it out), ``CUDA_ROOT`` set, the CUDA and Python headers present, or one line
  saying which is missing and which apt package brings it.

Off a Jetson it is a plain venv with ``pip install .``. ``plan_install`` is pure (facts in,
steps out) and tested against recorded devices; ``main`` gathers the facts, prints each step and
runs it (or only prints, with ``--dry-run``). Stdlib only: it runs before edgeseg is installed.

    sudo python3 -m edgeseg.platform.install --prefix /opt/edgeseg [--dry-run]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from edgeseg.platform.host import Host, recorded_host
from edgeseg.platform.jetson import JetsonPlatform, pip_constraints, read_platform

#: Where JetPack installs the CUDA toolkit (nvcc is not on sudo's PATH).
CUDA_HOME = "/usr/local/cuda"
#: The apt packages that bring what pycuda's build needs, as the one-line message names them.
CUDA_APT_HINT = "sudo apt install nvidia-cuda-dev (JetPack's CUDA toolkit; or all of JetPack: nvidia-jetpack)"
#: Requirements that the system's OpenCV replaces on a Jetson (PyPI's builds have no GStreamer).
OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                        "opencv-contrib-python-headless")
#: What the install asks the target interpreter before anything is installed (Python 3.6+ syntax,
#: so that a JetPack 4 device gets the one-line refusal rather than a SyntaxError).
PYTHON_PROBE = (
    "import json, sys\n"
    "def v(m):\n"
    "    try:\n"
    "        mod = __import__(m)\n"
    "    except Exception:\n"
    "        return None\n"
    "    return str(getattr(mod, '__version__', None) or getattr(mod, 'VERSION_TEXT', None) or 'unknown')\n"
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], 'cv2': v('cv2'), 'pycuda': v('pycuda')}))\n"
)
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class InstallError(Exception):
    """A refusal or failed step, said in one line (the caller prints it and exits non-zero)."""


@dataclass(frozen=True)
class Step:
    """One thing the install does: run ``argv`` (with ``env`` added, ``path`` put first on PATH),
    write ``text`` to ``write``, or only say ``note``."""

    argv: Tuple[str, ...] = ()
    env: Tuple[Tuple[str, str], ...] = ()
    path: str = ""
    write: str = ""
    text: str = ""
    note: str = ""

    def shell(self) -> str:
        """The step as a shell line (what ``--dry-run`` prints and each run announces)."""
        if self.note:
            return f"# {self.note}"
        if self.write:
            return f"cat > {shlex.quote(self.write)} <<'EOF'\n{self.text}EOF"
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env]
        if self.path:
            env.append(f"PATH={shlex.quote(self.path)}:\"$PATH\"")
        return " ".join([*env, *(shlex.quote(a) for a in self.argv)])


@dataclass(frozen=True)
class PythonFacts:
    """What the interpreter the venv is made from can import before the install."""

    executable: str
    version: str
    cv2: Optional[str] = None
    pycuda: Optional[str] = None


@dataclass(frozen=True)
class CudaFacts:
    """Where pycuda's build finds CUDA: nvcc, its root, and whether the headers it compiles with exist."""

    nvcc: Optional[str]
    root: Optional[str]
    cuda_header: bool
    python_header: bool


@dataclass(frozen=True)
class InstallFacts:
    platform: JetsonPlatform
    python: PythonFacts
    cuda: CudaFacts
    requirements: List[str] = field(default_factory=list)


# -- the facts ----------------------------------------------------------------------------------


def runtime_requirements(setup_py: Path) -> List[str]:
    """setup.py's ``RUNTIME`` list, read without running setup.py: the one list of requirements."""
    try:
        tree = ast.parse(setup_py.read_text(encoding="utf-8"), str(setup_py))
    except (OSError, SyntaxError) as exc:
        raise InstallError(f"{setup_py}: cannot read the runtime requirements ({exc})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "RUNTIME" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                break
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            break
    raise InstallError(f"{setup_py}: expected RUNTIME = [\"requirement\", ...], a list of strings")


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    return match.group(1).lower().replace("_", "-") if match else ""


def probe_python(host: Host, executable: str) -> PythonFacts:
    """Ask ``executable`` for its version and whether cv2 and pycuda import (InstallError if it cannot run)."""
    result = host.run([executable, "-c", PYTHON_PROBE])
    if not result.ok:
        raise InstallError(f"{executable}: cannot run this Python (exit {result.returncode}); "
                           "set PYTHON=/usr/bin/python3")
    try:
        doc = json.loads(result.stdout.strip().splitlines()[-1])
        return PythonFacts(executable, str(doc["version"]), doc.get("cv2"), doc.get("pycuda"))
    except (ValueError, KeyError, IndexError):
        answer = result.stdout[:80]
        raise InstallError(f"{executable}: unexpected answer to the interpreter probe: {answer!r}") from None


def probe_cuda(host: Host, python_version: str) -> CudaFacts:
    """nvcc in PATH or ``/usr/local/cuda/bin``; the CUDA and Python headers pycuda compiles against."""
    nvcc = host.which("nvcc", extra_dirs=[f"{CUDA_HOME}/bin"])
    root = str(Path(nvcc).parent.parent) if nvcc else None
    cuda_header = root is not None and host.path(f"{root}/include/cuda.h").is_file()
    python_header = host.path(f"/usr/include/python{python_version}/Python.h").is_file()
    return CudaFacts(nvcc, root, cuda_header, python_header)


def gather_facts(host: Host, python: str, source: Path) -> InstallFacts:
    platform = read_platform(host)
    facts = probe_python(host, python)
    return InstallFacts(platform, facts, probe_cuda(host, facts.version), runtime_requirements(source / "setup.py"))


# -- the plan -------------------------------------------------------------------------------------


def pycuda_missing(cuda: CudaFacts, python_version: str) -> Optional[str]:
    """What pycuda's build lacks here, as one line naming the apt package, or None."""
    if cuda.nvcc is None:
        return f"nvcc not found (looked in PATH and {CUDA_HOME}/bin): {CUDA_APT_HINT}"
    if not cuda.cuda_header:
        return f"CUDA headers missing ({cuda.root}/include/cuda.h): {CUDA_APT_HINT}"
    if not cuda.python_header:
        return (f"Python headers missing (/usr/include/python{python_version}/Python.h): "
                f"sudo apt install python{python_version}-dev")
    return None


def plan_install(facts: InstallFacts, prefix: str, source: str) -> List[Step]:
    """The steps that make ``prefix/venv`` for this device (InstallError when it must refuse)."""
    venv = f"{prefix}/venv"
    pip = (f"{venv}/bin/python", "-m", "pip")
    quiet = ("--quiet",)
    platform, python = facts.platform, facts.python
    if not platform.is_jetson:
        return [
            Step(note=f"not a Jetson: a plain venv with {python.executable} (Python {python.version})"),
            Step(argv=(python.executable, "-m", "venv", venv)),
            Step(argv=(*pip, "install", *quiet, "--upgrade", "pip")),
            Step(argv=(*pip, "install", *quiet, source)),
        ]
    problem = platform.problem()
    stack = platform.stack
    if stack is not None and not stack.supported:
        raise InstallError(problem or "unsupported JetPack")
    steps = [Step(note=platform.describe())]
    if stack is not None and python.version != stack.python:
        raise InstallError(
            f"{python.executable} is Python {python.version}; JetPack {platform.jetpack}'s TensorRT bindings exist "
            f"for its system Python {stack.python} only (make install PYTHON=/usr/bin/python3)")
    if problem is not None:
        steps.append(Step(note=f"WARNING {problem}: numpy is not pinned"))
    steps += [
        Step(argv=(python.executable, "-m", "venv", "--system-site-packages", venv)),
        Step(argv=(*pip, "install", *quiet, "--upgrade", "pip")),
    ]
    constraints: Tuple[str, ...] = ()
    lines = pip_constraints(platform)
    if lines:
        path = f"{prefix}/constraints.txt"
        steps.append(Step(write=path, text="".join(f"{line}\n" for line in lines)))
        constraints = ("-c", path)
    if python.cv2 is not None:
        rest = [r for r in facts.requirements if requirement_name(r) not in OPENCV_DISTRIBUTIONS]
        steps += [
            Step(note=f"system OpenCV {python.cv2} imports (JetPack's, with GStreamer): PyPI's OpenCV is left out"),
            Step(argv=(*pip, "install", *quiet, *constraints, "--no-deps", source)),
            Step(argv=(*pip, "install", *quiet, *constraints, *rest)),
        ]
    else:
        steps += [
            Step(note="no system OpenCV: PyPI's opencv-python-headless is installed (no GStreamer: no csi:// cameras)"),
            Step(argv=(*pip, "install", *quiet, *constraints, source)),
        ]
    if python.pycuda is not None:
        steps.append(Step(note=f"pycuda {python.pycuda} already installed system-wide"))
    else:
        missing = pycuda_missing(facts.cuda, python.version)
        if missing is not None:
            steps.append(Step(note=f"WARNING pycuda not installed (TensorRT engines cannot run): {missing}"))
        else:
            root = facts.cuda.root or CUDA_HOME
            steps.append(Step(argv=(*pip, "install", *quiet, *constraints, "pycuda"),
                              env=(("CUDA_ROOT", root),), path=f"{root}/bin"))
    return steps


# -- running it ------------------------------------------------------------------------------------


def run_step(step: Step) -> None:
    if step.note:
        return
    if step.write:
        try:
            Path(step.write).parent.mkdir(parents=True, exist_ok=True)
            Path(step.write).write_text(step.text, encoding="utf-8")
        except OSError as exc:
            raise InstallError(f"{step.write}: cannot write ({exc.strerror or exc})") from None
        return
    env: Dict[str, str] = dict(os.environ)
    env.update(dict(step.env))
    if step.path:
        env["PATH"] = f"{step.path}{os.pathsep}{env.get('PATH', '')}"
    try:
        code = subprocess.call(list(step.argv), env=env)
    except OSError as exc:
        raise InstallError(f"{step.argv[0]}: cannot run ({exc.strerror or exc})") from None
    if code != 0:
        raise InstallError(f"step failed with exit code {code}: {step.shell()}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m edgeseg.platform.install",
                                     description="Make edgeseg's runtime venv for this device (run by make install).")
    parser.add_argument("--prefix", default="/opt/edgeseg", help="install prefix; the venv is PREFIX/venv")
    parser.add_argument("--python", default="python3", help="interpreter to make the venv with (Jetson: the system's)")
    parser.add_argument("--source", default=".", help="edgeseg's source tree (holds setup.py)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    parser.add_argument("--root", metavar="DIR", help="plan for a recorded device root (implies --dry-run)")
    args = parser.parse_args(argv)
    try:
        host = recorded_host(args.root) if args.root else Host()
        python = args.python
        if not args.root and os.sep not in python:
            python = shutil.which(python) or python
        source = Path(args.source).resolve()
        steps = plan_install(gather_facts(host, python, source), args.prefix.rstrip("/") or "/", str(source))
        for step in steps:
            print(step.shell() if step.note else f"+ {step.shell()}", flush=True)
            if not (args.dry_run or args.root):
                run_step(step)
    except (InstallError, ValueError) as exc:
        print(f"install: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
