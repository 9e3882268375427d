"""``edgeseg doctor``: the field engineer's first command on a device.

One line per fact, ``ok|warn|FAIL  <what>: <finding>``: the board and its L4T/JetPack, the
Python, CUDA, cuDNN, TensorRT, GPU identity, pycuda, numpy (against JetPack's pin), OpenCV (with
or without GStreamer), ONNX Runtime, cameras, power mode, free space of the engine store, clock
sync, and which engines of the configured bundle run here and why the others do not. FAIL means
the configured service cannot run as configured (its bundle has no engine for this device, the
model is missing, TensorRT engines without pycuda, numpy outside JetPack's pin, MQTT on without
paho ...); the exit code is then 1. Without a service configuration (a workstation) what the
service would need is reported as ``warn``.

Every probe reads through one ``Host`` (edgeseg.platform.host): ``--root DIR`` replays a device
recorded as files (tests/data/platforms/), so the checks are tested on a JetPack 5 AGX Orin, a
JetPack 6 Orin Nano and an x86 box, not only on the machine that runs the tests.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgeseg.bundle.device import DeviceInfo, describe_device
from edgeseg.config import DEFAULT_SERVICE_CONFIG, Config, load_config
from edgeseg.errors import ConfigError, EdgesegError
from edgeseg.platform import probes
from edgeseg.platform.host import Host, recorded_host
from edgeseg.platform.jetson import JetsonPlatform, dpkg_versions, read_platform

OK, WARN, FAIL = "ok", "warn", "FAIL"
EXIT_OK = 0
EXIT_FAILED = 1
#: Free space below which the engine store cannot take another bundle and its engine builds.
DISK_FAIL_BYTES = 256 * 1024 * 1024
#: Free space below which a bundle install or an INT8 engine build may run out.
DISK_WARN_BYTES = 2 * 1024 * 1024 * 1024
GIB = 1024.0 ** 3
_LEADING_INTS = re.compile(r"^(\d+(?:\.\d+)*)")
_UPPER_PIN = re.compile(r"^numpy<([\d.]+)$")


@dataclass(frozen=True)
class Finding:
    """One line of the report: status, the thing checked, what was found."""

    status: str
    what: str
    finding: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.what}: {self.finding}"


@dataclass(frozen=True)
class Context:
    """What every check reads: the host, its Jetson facts, its device identity, the service config."""

    host: Host
    platform: JetsonPlatform
    device: DeviceInfo
    config: Config
    #: The service configuration file read, "" when none was found (defaults apply).
    config_file: str
    #: ``--model`` given on the command line (a path on this machine).
    model: Optional[str]

    @property
    def need(self) -> str:
        """Status for something the service would need: FAIL when a service is configured."""
        return FAIL if self.config_file or self.model else WARN

    def imports(self, module: str) -> bool:
        return self.host.try_import(module) is not None


def _version_tuple(text: str) -> Tuple[int, ...]:
    match = _LEADING_INTS.match(text.strip())
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def fits_pin(version: str, pin: str) -> Optional[bool]:
    """Whether numpy ``version`` satisfies ``pin`` (``numpy<1.24``); None for a pin it cannot read."""
    match = _UPPER_PIN.match(pin)
    if match is None:
        return None
    return _version_tuple(version) < _version_tuple(match.group(1))


def _same_release(found: str, expected: str) -> bool:
    """``8.5.2.2`` is JetPack's ``8.5.2``; ``12.6.68`` is its ``12.6``."""
    want = _version_tuple(expected)
    return _version_tuple(found)[: len(want)] == want


# -- the checks (each returns the lines it adds) -------------------------------------------------


def check_config(ctx: Context) -> List[Finding]:
    if ctx.config_file:
        return [Finding(OK, "config", ctx.config_file)]
    return [Finding(WARN, "config", f"no {DEFAULT_SERVICE_CONFIG} (sudo make install writes it); "
                                    "checking the defaults")]


def check_board(ctx: Context) -> List[Finding]:
    p = ctx.platform
    if not p.is_jetson:
        system = probes.os_release(ctx.host)
        return [Finding(OK, "board", f"not a Jetson: {ctx.host.machine}" + (f", {system}" if system else ""))]
    out = [Finding(OK, "board", p.board or "unknown (no /proc/device-tree/model)")]
    problem = p.problem()
    if problem is not None:
        status = FAIL if p.stack is not None and not p.stack.supported else WARN
        out.append(Finding(status, "L4T/JetPack", problem))
    elif p.l4t is not None and p.stack is not None:
        s = p.stack
        out.append(Finding(OK, "L4T/JetPack", f"R{p.l4t[0]}.{p.l4t[1]}.{p.l4t[2]} = JetPack {p.jetpack} (Ubuntu "
                                             f"{s.ubuntu}, Python {s.python}, TensorRT {s.tensorrt}, CUDA {s.cuda})"))
    return out


def check_python(ctx: Context) -> List[Finding]:
    version = ctx.host.python_version
    stack = ctx.platform.stack
    if stack is not None and stack.supported and not _same_release(version, stack.python):
        return [Finding(FAIL, "python", f"{version}: JetPack {ctx.platform.jetpack}'s TensorRT bindings exist for "
                                        f"its system Python {stack.python} only (sudo make install uses it)")]
    return [Finding(OK, "python", version)]


def check_cuda(ctx: Context) -> List[Finding]:
    found = probes.cuda_version(ctx.host)
    stack = ctx.platform.stack
    if found is None:
        if ctx.platform.is_jetson:
            return [Finding(WARN, "cuda", "no CUDA toolkit found (/usr/local/cuda): sudo apt install nvidia-cuda-dev")]
        return [Finding(OK, "cuda", "not installed")]
    version, source = found
    if stack is not None and stack.supported and not _same_release(version, stack.cuda):
        return [Finding(WARN, "cuda", f"{version} ({source}); JetPack {ctx.platform.jetpack} ships CUDA {stack.cuda}")]
    return [Finding(OK, "cuda", f"{version} ({source})")]


def check_cudnn(ctx: Context) -> List[Finding]:
    found = probes.cudnn_version(ctx.host)
    if found is not None:
        return [Finding(OK, "cudnn", f"{found[0]} ({found[1]})")]
    uses_cudnn = ctx.device.tensorrt is not None and _version_tuple(ctx.device.tensorrt)[:1] == (8,)
    if uses_cudnn:
        return [Finding(WARN, "cudnn", "not found (TensorRT 8 uses it for some layers)")]
    return [Finding(OK, "cudnn", "not found (not needed by TensorRT 10)" if ctx.device.tensorrt else "not found")]


def check_tensorrt(ctx: Context) -> List[Finding]:
    trt = ctx.device.tensorrt
    stack = ctx.platform.stack
    if trt is not None:
        if stack is not None and stack.supported and not _same_release(trt, stack.tensorrt):
            return [Finding(WARN, "tensorrt", f"{trt}; JetPack {ctx.platform.jetpack} ships {stack.tensorrt} "
                                              "(plans built elsewhere will not match)")]
        return [Finding(OK, "tensorrt", trt)]
    system = dpkg_versions(ctx.host, ["python3-libnvinfer"]).get("python3-libnvinfer")
    if system is not None:
        return [Finding(WARN, "tensorrt", f"JetPack's bindings are installed (python3-libnvinfer {system}) but this "
                                          "Python cannot import them: a venv without --system-site-packages, or "
                                          "another Python (sudo make install)")]
    return [Finding(WARN, "tensorrt", "not installed: TensorRT engines cannot run here (ONNX Runtime ones can)")]


def check_gpu(ctx: Context) -> List[Finding]:
    d = ctx.device
    if d.compute_capability is None:
        why = "pycuda is not installed" if not ctx.imports("pycuda") else "pycuda found none"
        return [Finding(WARN, "gpu", f"no CUDA GPU identified ({why}; NVML absent or found none)")]
    cc = f"sm {d.compute_capability[0]}{d.compute_capability[1]}"
    sms = f", {d.sm_count} SMs" if d.sm_count is not None else ", SM count unknown (NVML has none)"
    return [Finding(OK, "gpu", f"{d.gpu} ({cc}{sms}; from {d.gpu_source})")]


def check_pycuda(ctx: Context) -> List[Finding]:
    mod = ctx.host.try_import("pycuda")
    if mod is not None:
        return [Finding(OK, "pycuda", str(getattr(mod, "VERSION_TEXT", None) or "installed"))]
    if ctx.device.tensorrt is not None or ctx.platform.is_jetson:
        return [Finding(WARN, "pycuda", "not installed: TensorRT engines cannot run (sudo make install builds it "
                                        "against CUDA; it needs nvcc: sudo apt install nvidia-cuda-dev)")]
    return [Finding(OK, "pycuda", "not installed (not needed without TensorRT)")]


def check_numpy(ctx: Context) -> List[Finding]:
    mod = ctx.host.try_import("numpy")
    if mod is None:
        return [Finding(FAIL, "numpy", "not importable (a runtime requirement)")]
    version = str(getattr(mod, "__version__", "unknown"))
    pin = ctx.platform.numpy_pin
    if not pin:
        return [Finding(OK, "numpy", version)]
    if fits_pin(version, pin) is False:
        return [Finding(FAIL, "numpy", f"{version} breaks JetPack {ctx.platform.jetpack}'s bindings (needs {pin}; "
                                       "sudo make install pins it)")]
    return [Finding(OK, "numpy", f"{version} (JetPack {ctx.platform.jetpack} needs {pin})")]


def _source_scheme(ctx: Context) -> str:
    uri = ctx.config.source.uri or ""
    if uri.startswith("/dev/video"):
        return "v4l2"
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def check_opencv(ctx: Context) -> List[Finding]:
    cv = probes.opencv(ctx.host)
    if cv is None:
        return [Finding(FAIL, "opencv", "cv2 not importable (a runtime requirement)")]
    where = f", {cv.location}" if cv.location else ""
    if cv.gstreamer is not None and cv.gstreamer.upper().startswith("YES"):
        return [Finding(OK, "opencv", f"{cv.version} with GStreamer {cv.gstreamer[3:].strip()}{where}".rstrip())]
    text = f"{cv.version} without GStreamer{where}"
    if _source_scheme(ctx) == "csi":
        return [Finding(FAIL, "opencv", f"{text}: the configured csi:// camera needs JetPack's OpenCV")]
    if ctx.platform.is_jetson:
        return [Finding(WARN, "opencv", f"{text}: csi:// cameras need JetPack's OpenCV (sudo make install uses it)")]
    return [Finding(OK, "opencv", text)]


def check_onnxruntime(ctx: Context) -> List[Finding]:
    if ctx.device.onnxruntime is None:
        return [Finding(WARN, "onnxruntime", "not installed: no CPU fallback for bundles, no .onnx models")]
    return [Finding(OK, "onnxruntime", ctx.device.onnxruntime)]


def _configured_camera(ctx: Context) -> Optional[str]:
    """The /dev/videoN node the configured source reads, if it is a V4L2 camera."""
    uri = ctx.config.source.uri or ""
    rest = uri[len("v4l2://"):] if uri.lower().startswith("v4l2://") else uri
    if rest.isdigit():
        return f"/dev/video{rest}"
    return rest if rest.startswith("/dev/video") else None


def check_cameras(ctx: Context) -> List[Finding]:
    found = probes.cameras(ctx.host)
    wanted = _configured_camera(ctx)
    listed = ", ".join(found) if found else "none under /dev"
    if wanted is not None and wanted not in found:
        return [Finding(ctx.need, "cameras", f"{listed}; the configured source needs {wanted}")]
    if not found and (_source_scheme(ctx) in ("csi", "v4l2") or not ctx.config.source.uri):
        return [Finding(WARN, "cameras", listed)]
    return [Finding(OK, "cameras", listed)]


def check_power(ctx: Context) -> List[Finding]:
    if not ctx.platform.is_jetson:
        return []
    found = probes.power_mode(ctx.host)
    if found is None:
        return [Finding(WARN, "power mode", "unknown (no nvpmodel, no /var/lib/nvpmodel/status)")]
    return [Finding(OK, "power mode", f"{found[0]} ({found[1]})")]


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(ctx: Context) -> List[Finding]:
    root = ctx.config.engines.root
    try:
        usage = shutil.disk_usage(str(_existing(ctx.host.path(root))))
    except OSError as exc:
        return [Finding(WARN, "disk", f"{root}: cannot read free space ({exc.strerror or exc})")]
    text = f"{usage.free / GIB:.1f} GiB free of {usage.total / GIB:.1f} GiB at {root}"
    if usage.free < DISK_FAIL_BYTES:
        return [Finding(ctx.need, "disk", f"{text}: too little for a bundle or an engine build")]
    if usage.free < DISK_WARN_BYTES:
        return [Finding(WARN, "disk", f"{text}: an engine build or a second bundle may not fit")]
    return [Finding(OK, "disk", text)]


def check_clock(ctx: Context) -> List[Finding]:
    found = probes.clock_synchronized(ctx.host)
    if found is None:
        return [Finding(WARN, "clock", "synchronisation unknown (no timedatectl, no timesyncd flag)")]
    if found[0] != "yes":
        return [Finding(WARN, "clock", f"not synchronised ({found[1]}): result timestamps and TLS certificate "
                                       "checks need the right time")]
    return [Finding(OK, "clock", f"synchronised ({found[1]})")]


def check_mqtt(ctx: Context) -> List[Finding]:
    if not ctx.config.mqtt.enabled:
        return [Finding(OK, "mqtt", "off")]
    if not ctx.imports("paho.mqtt.client"):
        return [Finding(FAIL, "mqtt", "enabled but paho-mqtt is not installed (pip install 'paho-mqtt>=2,<3')")]
    return [Finding(OK, "mqtt", "enabled, paho-mqtt installed")]


def check_model(ctx: Context) -> List[Finding]:
    """The model the service runs: present, and for a bundle which engines run here and why not."""
    from edgeseg.bundle.manifest import is_bundle

    if ctx.model is not None:
        path, shown = Path(ctx.model), ctx.model
    elif ctx.config.model.path:
        path, shown = ctx.host.path(ctx.config.model.path), ctx.config.model.path
    else:
        active = f"{ctx.config.engines.root.rstrip('/')}/active"
        if not ctx.host.path(active).exists():
            return [Finding(ctx.need, "model", f"none configured (model.path) and no {active}: "
                                               "edgeseg engines install --activate BUNDLE")]
        path, shown = ctx.host.path(active), active
    if not path.exists():
        return [Finding(ctx.need, "model", f"{shown} does not exist (install a bundle: edgeseg engines install "
                                           "--activate BUNDLE)")]
    if is_bundle(path):
        return check_bundle(ctx, path, shown)
    if path.suffix.lower() == ".onnx":
        if ctx.device.onnxruntime is None:
            return [Finding(ctx.need, "model", f"{shown} needs ONNX Runtime, which is not installed")]
        return [Finding(OK, "model", f"{shown} (ONNX Runtime {ctx.device.onnxruntime})")]
    return [Finding(OK, "model", shown)]


def check_bundle(ctx: Context, path: Path, shown: str) -> List[Finding]:
    from edgeseg.bundle.local import load_merged_manifest
    from edgeseg.bundle.selftest import describe_reference
    from edgeseg.bundle.verify import incompatibility, partition_engines

    try:
        manifest = load_merged_manifest(path)  # what the service serves: signed engines + device-built plans
    except EdgesegError as exc:
        return [Finding(ctx.need, "bundle", " ".join(str(exc).split()))]
    usable, _ = partition_engines(manifest, ctx.device)
    engines = manifest.engines
    trt = [e for e in engines if e.runtime == "tensorrt"]
    usable_trt = [e for e in usable if e.runtime == "tensorrt"]
    label = f"bundle {manifest.name}"
    resolved = path.resolve().name
    where = f"{shown} -> {resolved}" if resolved != path.name else shown
    summary = f"{len(usable)} of {len(engines)} engines run here ({where})"
    out: List[Finding] = []
    if not usable:
        out.append(Finding(ctx.need, label, f"{summary}: no engine for this device"))
    elif not usable_trt and ctx.device.tensorrt and ctx.device.compute_capability:
        # TensorRT and a GPU are here, yet the service would run on the CPU: the plans must be
        # built on this module (a plan fits one TensorRT version and one GPU model).
        why = "its TensorRT engines do not fit" if trt else "it holds no TensorRT plan for this device"
        out.append(Finding(WARN, label, f"{summary}: {why}, it runs on ONNX Runtime (CPU); build the plans here: "
                                        f"edgeseg engines build {shown}"))
    elif trt and not usable_trt:
        out.append(Finding(WARN, label, f"{summary}: its TensorRT engines do not fit, it runs on ONNX Runtime (CPU)"))
    else:
        out.append(Finding(OK, label, summary))
    for e in engines:
        reason = incompatibility(e, ctx.device)
        kind = f"{e.runtime} {e.precision} {e.resolution[0]}x{e.resolution[1]}"
        out.append(Finding(OK if reason is None else WARN, f"engine {e.file}",
                           f"{kind}: runs here" if reason is None else f"{kind}: not here: {reason}"))
    if trt and ctx.device.tensorrt is not None and not ctx.imports("pycuda"):
        out.append(Finding(ctx.need, "pycuda", "the bundle has TensorRT engines but pycuda is missing: "
                                               "sudo make install builds it (needs nvcc)"))
    out.append(Finding(WARN if manifest.selftest is None else OK, "self-test", describe_reference(manifest)))
    return out


CHECKS: Tuple[Callable[[Context], List[Finding]], ...] = (
    check_config, check_board, check_python, check_cuda, check_cudnn, check_tensorrt, check_gpu, check_pycuda,
    check_numpy, check_opencv, check_onnxruntime, check_cameras, check_power, check_disk, check_clock,
    check_mqtt, check_model,
)


# -- running them ------------------------------------------------------------------------------


def _load_service_config(host: Host, config: Optional[str]) -> Tuple[Config, str, Optional[Finding]]:
    """The service configuration (``--config``, else the installed one), or defaults and why."""
    path = config
    if path is None and host.path(DEFAULT_SERVICE_CONFIG).is_file():
        path = str(host.path(DEFAULT_SERVICE_CONFIG))
    if path is None:
        return load_config(None), "", None
    try:
        return load_config(path), path, None
    except ConfigError as exc:
        return load_config(None), "", Finding(FAIL, "config", " ".join(str(exc).split()))


@dataclass(frozen=True)
class Diagnosis:
    device: DeviceInfo
    findings: List[Finding]

    @property
    def failed(self) -> bool:
        return any(f.status == FAIL for f in self.findings)

    def as_dict(self) -> Dict[str, Any]:
        return {"ok": not self.failed, "device": asdict(self.device), "findings": [asdict(f) for f in self.findings]}

    def as_text(self) -> str:
        failed = sum(f.status == FAIL for f in self.findings)
        warned = sum(f.status == WARN for f in self.findings)
        verdict = " (the service cannot run as configured)" if failed else ""
        return "\n".join([*(f.line() for f in self.findings), f"doctor: {failed} FAIL, {warned} warn{verdict}"])


def diagnose(host: Host, config: Optional[str] = None, model: Optional[str] = None) -> Diagnosis:
    """Every check on ``host``, in report order."""
    service, config_file, problem = _load_service_config(host, config)
    ctx = Context(host=host, platform=read_platform(host), device=describe_device(host), config=service,
                  config_file=config_file, model=model)
    findings: List[Finding] = [problem] if problem is not None else []
    for check in CHECKS:
        if check is check_config and problem is not None:
            continue
        findings += check(ctx)
    return Diagnosis(ctx.device, findings)


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.root:
        try:
            host = recorded_host(args.root)
        except ValueError as exc:
            raise ConfigError(f"--root: {exc}") from None
    else:
        host = Host()
    result = diagnose(host, args.config, args.model)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.as_text())
    return EXIT_FAILED if result.failed else EXIT_OK


def add_doctor_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``doctor`` on the ``edgeseg`` parser's subparsers."""
    p = subparsers.add_parser(
        "doctor", help="check this device for the service: JetPack, CUDA, TensorRT, pycuda, numpy, OpenCV, bundle",
        description="One line per check (ok|warn|FAIL); exit code 1 when the configured service cannot run.",
    )
    p.add_argument("--config", metavar="FILE", help=f"service configuration (default {DEFAULT_SERVICE_CONFIG} "
                                                     "when present)")
    p.add_argument("--model", metavar="PATH", help="check this bundle or ONNX file instead of the configured model")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--root", metavar="DIR", help="replay a device recorded as files (support, tests) instead of "
                                                 "this machine; config paths are read under DIR")
    p.set_defaults(func=cmd_doctor)
    return p

