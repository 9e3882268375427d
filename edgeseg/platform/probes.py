"""System facts ``edgeseg doctor`` reports, each read through a ``Host`` and None where absent.

Each probe says where its answer came from, because on a device in the field "which file said
so" is half of the diagnosis (a CUDA toolkit version next to a different runtime, a power mode
from the status file because nvpmodel is not on PATH). Nothing here judges; the doctor does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from edgeseg.platform.host import Host
from edgeseg.platform.jetson import dpkg_versions

CUDA_HOME = "/usr/local/cuda"
#: cuDNN's version header: JetPack and NVIDIA's apt packages put it in one of these.
CUDNN_HEADERS = (
    "/usr/include/cudnn_version.h",
    "/usr/include/aarch64-linux-gnu/cudnn_version_v9.h",
    "/usr/include/aarch64-linux-gnu/cudnn_version_v8.h",
    "/usr/include/x86_64-linux-gnu/cudnn_version_v9.h",
    "/usr/include/x86_64-linux-gnu/cudnn_version_v8.h",
    f"{CUDA_HOME}/include/cudnn_version.h",
)
NVPMODEL_CONF = "/etc/nvpmodel.conf"
NVPMODEL_STATUS = "/var/lib/nvpmodel/status"
TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"

_NVCC_RELEASE = re.compile(r"release\s+[\d.]+,\s*V([\d.]+)")
_CUDA_TXT = re.compile(r"CUDA Version\s+([\d.]+)")
_DEFINE = re.compile(r"#define\s+CUDNN_(MAJOR|MINOR|PATCHLEVEL)\s+(\d+)")
_POWER_MODE = re.compile(r"NV Power Mode:\s*(.+)")
_POWER_MODEL = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)")
_PMODE = re.compile(r"pmode:(\d+)")
_GSTREAMER = re.compile(r"^\s*GStreamer:\s*(.+?)\s*$", re.MULTILINE)

#: A fact and the place it was read from.
Sourced = Tuple[str, str]


def os_release(host: Host) -> Optional[str]:
    """``PRETTY_NAME`` of /etc/os-release (read by hand: ``platform.freedesktop_os_release`` is 3.10+)."""
    text = host.read_text("/etc/os-release")
    for line in (text or "").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "PRETTY_NAME":
            return value.strip().strip('"') or None
    return None


def cuda_version(host: Host) -> Optional[Sourced]:
    """The CUDA toolkit's version: version.json (11.1+), version.txt (older), else ``nvcc --version``."""
    text = host.read_text(f"{CUDA_HOME}/version.json")
    if text is not None:
        try:
            doc: Any = json.loads(text)
            return str(doc["cuda"]["version"]), f"{CUDA_HOME}/version.json"
        except (ValueError, KeyError, TypeError):
            pass
    text = host.read_text(f"{CUDA_HOME}/version.txt")
    match = _CUDA_TXT.search(text or "")
    if match:
        return match.group(1), f"{CUDA_HOME}/version.txt"
    nvcc = host.which("nvcc", extra_dirs=[f"{CUDA_HOME}/bin"])
    if nvcc is not None:
        result = host.run([nvcc, "--version"])
        match = _NVCC_RELEASE.search(result.stdout) if result.ok else None
        if match:
            return match.group(1), f"{nvcc} --version"
    return None


def cudnn_version(host: Host) -> Optional[Sourced]:
    """cuDNN from dpkg (``libcudnn8``, ``libcudnn9-cuda-12``...), else from its version header."""
    packages = dpkg_versions(host, ["libcudnn*"])
    runtime = {name: v for name, v in packages.items() if not name.endswith(("-dev", "-samples", "-doc"))}
    if runtime:
        name = sorted(runtime)[-1]
        return runtime[name].split("-")[0], f"dpkg {name}"
    for header in CUDNN_HEADERS:
        parts = dict(_DEFINE.findall(host.read_text(header) or ""))
        if "MAJOR" in parts and "MINOR" in parts:
            return f"{parts['MAJOR']}.{parts['MINOR']}.{parts.get('PATCHLEVEL', '0')}", header
    return None


def power_mode(host: Host) -> Optional[Sourced]:
    """The nvpmodel power mode: ``nvpmodel -q``, else its status file and configuration."""
    result = host.run(["nvpmodel", "-q"])
    if result.ok:
        match = _POWER_MODE.search(result.stdout)
        if match:
            lines = [ln.strip() for ln in result.stdout.splitlines()]
            ids = [ln for ln in lines if ln.isdigit()]
            mode = match.group(1).strip()
            return (f"{mode}, mode {ids[-1]}" if ids else mode), "nvpmodel -q"
    status = _PMODE.search(host.read_text(NVPMODEL_STATUS) or "")
    if status is None:
        return None
    mode_id = int(status.group(1))
    names = {int(i): name for i, name in _POWER_MODEL.findall(host.read_text(NVPMODEL_CONF) or "")}
    name = names.get(mode_id, "unnamed")
    return f"{name}, mode {mode_id}", f"{NVPMODEL_STATUS} and {NVPMODEL_CONF}"


def clock_synchronized(host: Host) -> Optional[Sourced]:
    """"yes"/"no" from ``timedatectl`` (any NTP client), else systemd-timesyncd's flag file."""
    result = host.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    answer = result.stdout.strip().lower() if result.ok else ""
    if answer in ("yes", "no"):
        return answer, "timedatectl"
    if host.path(TIMESYNC_FLAG).exists():
        return "yes", TIMESYNC_FLAG
    return None


def cameras(host: Host) -> List[str]:
    """V4L2 nodes (``/dev/video*``; CSI cameras appear there too on a Jetson), in number order."""
    dev = host.path("/dev")
    try:
        names = [p.name for p in dev.iterdir() if re.fullmatch(r"video\d+", p.name)]
    except OSError:
        return []
    return [f"/dev/{n}" for n in sorted(names, key=lambda n: int(n[5:]))]


@dataclass(frozen=True)
class OpenCvFacts:
    version: str
    gstreamer: Optional[str]  # "YES (1.16.3)", "NO", or None when the build information is silent
    location: str


def opencv(host: Host) -> Optional[OpenCvFacts]:
    """The cv2 this Python imports: version, GStreamer support (from its build information), file."""
    cv2 = host.try_import("cv2")
    if cv2 is None:
        return None
    try:
        info = str(cv2.getBuildInformation())
    except Exception:  # a stripped or broken build: its version still tells something
        info = ""
    match = _GSTREAMER.search(info)
    return OpenCvFacts(str(getattr(cv2, "__version__", "unknown")), match.group(1) if match else None,
                       str(getattr(cv2, "__file__", "") or ""))
