"""Which Jetson this is and what its JetPack brings: L4T release -> JetPack -> software stack.

Read from three places (docs/jetson.md): ``/etc/nv_tegra_release`` (``# R35 (release), REVISION:
4.1, ...``), the version of dpkg's ``nvidia-l4t-core`` package (``35.4.1-20230801124926``; the
only source left where the release file was not copied, as in some containers) and the board in
``/proc/device-tree/model``. The stack of each release is the table of docs/jetson.md, as code;
``make install`` asks it for the numpy pin (``--pip-constraints``) before anything is installed,
so this module is stdlib only.

    python3 -m edgeseg.platform.jetson --describe
    python3 -m edgeseg.platform.jetson --pip-constraints > constraints.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from edgeseg.platform.host import Host, recorded_host

TEGRA_RELEASE = "/etc/nv_tegra_release"
DPKG_STATUS = "/var/lib/dpkg/status"
DEVICE_TREE_MODEL = "/proc/device-tree/model"
L4T_CORE_PACKAGE = "nvidia-l4t-core"

_RELEASE_LINE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?")
_PACKAGE_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")

L4tVersion = Tuple[int, int, int]


@dataclass(frozen=True)
class Stack:
    """What one JetPack series installs, and the numpy edgeseg's venv must stay within there."""

    jetpack: str
    ubuntu: str
    python: str
    tensorrt: str
    cuda: str
    numpy_pin: str
    modules: str

    @property
    def supported(self) -> bool:
        return bool(self.numpy_pin)


#: (L4T major, first minor, last minor) -> stack; docs/jetson.md's table. Sources: NVIDIA JetPack
#: release notes; dusty-nv/jetson-containers ``l4t_version.py``. numpy pins: TensorRT 8.5's
#: ``np.bool`` (removed in numpy 1.24) on JetPack 5; numpy-1.x builds (OpenCV, onnxruntime-gpu)
#: on JetPack 6.
STACKS: Tuple[Tuple[int, int, int, Stack], ...] = (
    (32, 0, 99, Stack("4.6.x", "18.04", "3.6", "8.2", "10.2", "", "Nano, TX2, Xavier (end of life)")),
    (35, 1, 1, Stack("5.0.2", "20.04", "3.8", "8.4.1", "11.4", "numpy<1.24", "Xavier, Orin")),
    (35, 2, 99, Stack("5.1.x", "20.04", "3.8", "8.5.2", "11.4", "numpy<1.24", "Xavier NX, AGX Xavier, all Orin")),
    (36, 2, 3, Stack("6.0", "22.04", "3.10", "8.6.2", "12.2", "numpy<2", "Orin")),
    (36, 4, 99, Stack("6.1 / 6.2", "22.04", "3.10", "10.3", "12.6", "numpy<2", "Orin")),
)
#: Releases whose JetPack name is known exactly (jetson-containers ``NVIDIA_JETPACK``).
JETPACK_RELEASES: Dict[L4tVersion, str] = {
    (35, 1, 0): "5.0.2", (35, 2, 1): "5.1", (35, 3, 1): "5.1.1", (35, 4, 1): "5.1.2",
    (36, 2, 0): "6.0 DP", (36, 3, 0): "6.0", (36, 4, 0): "6.1", (36, 4, 2): "6.1.1", (36, 4, 3): "6.2",
}


def l4t_text(version: L4tVersion) -> str:
    return f"R{version[0]}.{version[1]}.{version[2]}"


@dataclass(frozen=True)
class JetsonPlatform:
    """This device's L4T release, its board and (where known) what its JetPack installs."""

    l4t: Optional[L4tVersion]
    l4t_source: str
    board: Optional[str]
    stack: Optional[Stack]

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None or (self.board is not None and "jetson" in self.board.lower())

    @property
    def jetpack(self) -> Optional[str]:
        if self.l4t is None:
            return None
        return JETPACK_RELEASES.get(self.l4t) or (self.stack.jetpack if self.stack else None)

    @property
    def numpy_pin(self) -> str:
        """A pip requirement (``numpy<1.24``), or "" off-Jetson and on releases not in the table."""
        return self.stack.numpy_pin if self.stack else ""

    def problem(self) -> Optional[str]:
        """Why edgeseg cannot know or support this Jetson's stack (one line), or None."""
        if not self.is_jetson:
            return None
        if self.l4t is None:
            return (f"a Jetson ({self.board}) without an L4T release: neither {TEGRA_RELEASE} nor dpkg's "
                    f"{L4T_CORE_PACKAGE} says which JetPack it runs")
        if self.stack is None:
            return (f"L4T {l4t_text(self.l4t)} is not in edgeseg's JetPack table (known: R35 = JetPack 5, "
                    "R36 = JetPack 6; docs/jetson.md); its TensorRT, CUDA and numpy pin are unknown")
        if not self.stack.supported:
            return (f"L4T {l4t_text(self.l4t)} is JetPack {self.stack.jetpack} (Python {self.stack.python}), "
                    "out of scope: edgeseg's runtime needs Python 3.8+ (JetPack 5 or 6)")
        return None

    def describe(self) -> str:
        """One line: board, L4T, JetPack and its stack, or why the stack is unknown."""
        if not self.is_jetson:
            return "not a Jetson (no /etc/nv_tegra_release, no nvidia-l4t-core package)"
        board = self.board or "unknown board"
        problem = self.problem()
        if problem is not None or self.l4t is None or self.stack is None:
            return f"{board}: {problem}"
        s = self.stack
        return (f"{board}: L4T {l4t_text(self.l4t)} (from {self.l4t_source}) = JetPack {self.jetpack}: "
                f"Ubuntu {s.ubuntu}, Python {s.python}, TensorRT {s.tensorrt}, CUDA {s.cuda}, {s.numpy_pin}")


# -- parsing ---------------------------------------------------------------------------------------


def parse_tegra_release(text: str) -> Optional[L4tVersion]:
    """``# R35 (release), REVISION: 4.1, ...`` -> (35, 4, 1); None when the line is not there."""
    match = _RELEASE_LINE.search(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def parse_package_version(version: str) -> Optional[L4tVersion]:
    """``35.4.1-20230801124926`` -> (35, 4, 1)."""
    match = _PACKAGE_VERSION.match(version.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def installed_packages(status_text: str, names: Sequence[str]) -> Dict[str, str]:
    """Package -> version for those of ``names`` that dpkg's status file lists as installed.

    A name ending in ``*`` stands for every package starting with the rest (``libcudnn*``).
    """
    wanted = {n for n in names if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
    found: Dict[str, str] = {}
    if not any(f"Package: {n}" in status_text for n in (*wanted, *prefixes)):
        return found  # a workstation's status file is megabytes without a single L4T package
    for stanza in status_text.split("\n\n"):
        fields: Dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue  # continuation lines (descriptions) carry nothing we read
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        name = fields.get("Package", "")
        named = name in wanted or bool(prefixes and name.startswith(prefixes))
        if named and fields.get("Status", "").endswith(" installed") and "Version" in fields:
            found[name] = fields["Version"]
    return found


def dpkg_versions(host: Host, names: Sequence[str]) -> Dict[str, str]:
    """Installed versions of ``names`` on ``host`` (empty without dpkg)."""
    text = host.read_text(DPKG_STATUS)
    return installed_packages(text, names) if text else {}


def stack_for(version: L4tVersion) -> Optional[Stack]:
    major, minor, _ = version
    for table_major, first, last, stack in STACKS:
        if major == table_major and first <= minor <= last:
            return stack
    return None


def read_board(host: Host) -> Optional[str]:
    """``/proc/device-tree/model`` without its trailing NUL, or None where there is no device tree."""
    text = host.read_text(DEVICE_TREE_MODEL)
    if text is None:
        return None
    model = text.rstrip("\x00").strip()
    return model or None


def read_platform(host: Host) -> JetsonPlatform:
    """The L4T release (release file first, then dpkg), the board and the release's stack."""
    l4t: Optional[L4tVersion] = None
    source = ""
    release = host.read_text(TEGRA_RELEASE)
    if release is not None:
        l4t, source = parse_tegra_release(release), TEGRA_RELEASE
    if l4t is None:
        version = dpkg_versions(host, [L4T_CORE_PACKAGE]).get(L4T_CORE_PACKAGE)
        if version is not None:
            l4t, source = parse_package_version(version), f"dpkg {L4T_CORE_PACKAGE} {version}"
    return JetsonPlatform(l4t=l4t, l4t_source=source if l4t else "", board=read_board(host),
                          stack=stack_for(l4t) if l4t else None)


def pip_constraints(platform: JetsonPlatform) -> List[str]:
    """pip constraint lines for this device: JetPack's numpy pin on a Jetson, none elsewhere."""
    return [platform.numpy_pin] if platform.numpy_pin else []


# -- command line (runs from the source tree, before edgeseg is installed) -------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m edgeseg.platform.jetson",
                                     description="This Jetson's L4T release, JetPack stack and numpy pin.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--describe", action="store_true", help="one line: board, L4T, JetPack, its stack")
    what.add_argument("--pip-constraints", action="store_true",
                      help="pip constraints for this device (numpy pin; nothing off-Jetson)")
    parser.add_argument("--root", metavar="DIR", help="a recorded device root instead of this machine")
    args = parser.parse_args(argv)
    try:
        host = recorded_host(args.root) if args.root else Host()
    except ValueError as exc:
        print(f"edgeseg.platform.jetson: {exc}", file=sys.stderr)
        return 2
    platform = read_platform(host)
    if args.describe:
        print(platform.describe())
        return 0
    problem = platform.problem()
    if problem is not None:
        print(f"edgeseg.platform.jetson: {problem}", file=sys.stderr)
    for line in pip_constraints(platform):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
