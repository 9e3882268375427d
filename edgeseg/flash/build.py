"""``edgeseg engines build``: TensorRT plans built on the device from the ONNX files of a bundle.

    bundle (signed ONNX files) ─► refusals checked first (TensorRT, GPU, JetPack, files, rights)
        per (resolution, precision): fp32 ONNX for fp32/fp16, the Q/DQ ONNX for int8
            ─► up to date for this device and TensorRT? skip
            ─► staged overlay ─► build (timing cache kept) ─► self-test ─► device/ replaced whole

A plan is specific to the TensorRT version and GPU that built it, so the export stage ships
ONNX files and the device builds its own plans, with the runtime's dependencies plus TensorRT
(``edgeseg.backends.trt_build``). Plans go into the bundle's device-local overlay
(``edgeseg.bundle.local``), never into the signed files. Every decision that is not a TensorRT
call (which ONNX serves which plan, what is refused, what is up to date) is plain Python here,
tested without a GPU; the builder and the self-test are passed in as functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Dict, Final, List, Optional, Tuple

from edgeseg.backends import trt_plan
from edgeseg.bundle.device import DeviceInfo, builder_record
from edgeseg.bundle.local import (
    DEVICE_DIR,
    BuiltFrom,
    DeviceManifest,
    DevicePlan,
    describe_file,
    manifest_digest,
    overlay_lock,
    read_device_manifest,
    read_signed,
    source_problem,
    staged_overlay,
    stale_problem,
)
from edgeseg.bundle.manifest import BuilderRecord, EngineRecord, Manifest
from edgeseg.bundle.verify import file_problem
from edgeseg.errors import BundleError, EdgesegError

if TYPE_CHECKING:
    from edgeseg.bundle.selftest import SelfTestResult

log = logging.getLogger(__name__)

PRECISIONS: Final = ("fp32", "fp16", "int8")
#: What ``engines build`` makes when no --precision is given: fp16, and int8 where the bundle
#: has the Q/DQ ONNX (fp32 plans are rarely worth their memory next to fp16).
DEFAULT_PRECISIONS: Final = ("fp16", "int8")
DEFAULT_WORKSPACE_MIB: Final = 1024
#: Seconds between "still building" lines: one plan takes minutes on an Orin Nano.
HEARTBEAT_S: Final = 30.0
INT8_QUANTIZATION: Final = "qdq-symmetric"
#: The export's name for the Q/DQ ONNX, where an older bundle keeps it in ``extra_files`` only.
_QDQ_EXTRA: Final = re.compile(r"-(\d+)-int8-qdq\.onnx$")

#: ``edgeseg.backends.trt_build.build_engine``'s signature.
Builder = Callable[..., BuilderRecord]
#: Self-tests a staged plan: (bundle dir, signed manifest, the plan's record, the staged file).
PlanSelfTest = Callable[[Path, Manifest, EngineRecord, Path], Optional["SelfTestResult"]]
Say = Callable[[str], None]


# -- which ONNX builds which plan ---------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A bundle ONNX file a plan is built from, as the signed manifest describes it."""

    file: str
    sha256: str
    resolution: Tuple[int, int]
    #: The file itself computes in fp16 (an FP16 ONNX), which TensorRT 11 needs for fp16 plans.
    fp16: bool = False
    #: Frames one call takes (the export's ``--batch``): the plan's profile is min 1 / opt / max this.
    max_batch: int = 1


@dataclass(frozen=True)
class PlanRequest:
    """One plan to build: its size and precision, the ONNX it comes from, its file name."""

    size: int
    precision: trt_plan.Precision
    source: Source
    file: str

    @property
    def key(self) -> Tuple[int, str]:
        return self.size, self.precision

    @property
    def name(self) -> str:
        return PurePosixPath(self.file).name


def onnx_sources(manifest: Manifest) -> Dict[Tuple[int, str], Source]:
    """(size, precision) -> the bundle's ONNX file to build that plan from.

    The export records its ONNX files as ONNX Runtime engines: the fp32 file (fp32 and fp16
    plans), the Q/DQ file (``quantization: qdq-symmetric``, int8 plans). The QOperator file is
    ONNX Runtime's CPU form, which TensorRT does not build. A Q/DQ file kept in ``extra_files``
    only (named ``<name>-<size>-int8-qdq.onnx``) serves as well.
    """
    out: Dict[Tuple[int, str], Source] = {}
    for e in manifest.engines:
        if e.runtime != "onnxruntime" or not e.file.endswith(".onnx"):
            continue
        src = Source(e.file, e.sha256, e.resolution, fp16=e.precision == "fp16", max_batch=e.max_batch)
        size = max(e.resolution)
        if e.precision == "fp32" and e.quantization is None:
            out.setdefault((size, "fp32"), src)
            out.setdefault((size, "fp16"), src)
        elif e.precision == "fp16":
            out[(size, "fp16")] = src  # an FP16 ONNX beats the fp32 one for fp16 plans
        elif e.precision == "int8" and e.quantization == INT8_QUANTIZATION:
            out[(size, "int8")] = src
    for name, sha in manifest.extra_files.items():
        m = _QDQ_EXTRA.search(name)
        if m is not None:
            size = int(m.group(1))
            out.setdefault((size, "int8"), Source(name, sha, (size, size)))
    return out


def parse_precisions(text: str) -> Tuple[str, ...]:
    """``fp16,int8`` -> ("fp16", "int8"); BundleError naming the choices."""
    items = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in items if p not in PRECISIONS]
    if bad or not items:
        raise BundleError(f"--precision {text!r}: expected a list of {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in items)


def parse_sizes(text: str) -> Tuple[int, ...]:
    """``320,640`` -> (320, 640); BundleError otherwise."""
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise BundleError(f"--resolutions {text!r}: expected comma-separated sizes such as 320,640") from None
    if not sizes:
        raise BundleError(f"--resolutions {text!r}: expected comma-separated sizes such as 320,640")
    return tuple(sizes)


def plan_file(manifest: Manifest, size: int, precision: str) -> str:
    return f"{DEVICE_DIR}/{manifest.name}-{size}-{precision}.engine"


def plan_requests(
    manifest: Manifest,
    version: trt_plan.TrtVersion,
    precisions: Optional[Sequence[str]] = None,
    sizes: Optional[Sequence[int]] = None,
    *,
    strict: Optional[bool] = None,
) -> Tuple[List[PlanRequest], List[str]]:
    """The plans to build and notes on those left out, or BundleError (one line).

    Precisions asked for explicitly (``strict``, the default when ``precisions`` are given) must
    be buildable at every size; otherwise (by default fp16 and int8) each is built wherever the
    bundle has its ONNX, and what is left out is noted instead.
    """
    sources = onnx_sources(manifest)
    have = sorted({size for size, _ in sources})
    if not have:
        raise BundleError(f"bundle {manifest.name}: no ONNX file to build a TensorRT plan from")
    for s in sizes or ():
        if s not in have:
            raise BundleError(f"bundle {manifest.name}: no ONNX for resolution {s}; it has {', '.join(map(str, have))}")
    explicit = precisions is not None if strict is None else strict
    wanted = tuple(precisions) if precisions is not None else DEFAULT_PRECISIONS
    out: List[PlanRequest] = []
    notes: List[str] = []
    for size in sizes or have:
        for precision in wanted:
            src = sources.get((size, precision))
            why = None
            if src is None:
                why = (f"no {'Q/DQ ' if precision == 'int8' else ''}ONNX for {precision} at {size}"
                       + (" (int8 plans come from the export's Q/DQ ONNX, exported with --precision int8)"
                          if precision == "int8" else ""))
            elif trt_plan.build_decisions(version, precision).requires_fp16_onnx and not src.fp16:
                why = (f"TensorRT {version} has no FP16 builder flag (removed in 11.0): fp16 at {size} needs an FP16 "
                       f"ONNX, the bundle has {src.file} (fp32)")
            if why is None and src is not None:
                out.append(PlanRequest(size, trt_plan.parse_precision(precision), src,
                                       plan_file(manifest, size, precision)))
            elif explicit:
                raise BundleError(f"bundle {manifest.name}: {why}")
            else:
                notes.append(why or "")
    if not out:
        raise BundleError(f"bundle {manifest.name}: nothing to build ({'; '.join(notes)})")
    return out, notes


# -- refusals before anything is written ----------------------------------------------------------


def preflight(device: DeviceInfo, platform_problem: Optional[str] = None) -> trt_plan.TrtVersion:
    """The TensorRT release to build with, or BundleError saying in one line why not here."""
    if device.tensorrt is None:
        raise BundleError("engines build: TensorRT is not installed here (on a Jetson: JetPack's python3-libnvinfer; "
                          "a venv sees it when made with --system-site-packages)")
    try:
        version = trt_plan.TrtVersion.parse(device.tensorrt)
        trt_plan.require_supported(version)
    except ValueError as exc:
        raise BundleError(f"engines build: {exc}") from None
    if device.compute_capability is None:
        raise BundleError("engines build: no CUDA GPU identified (probed with pycuda, then NVML): a plan is built "
                          "on the GPU that runs it")
    if platform_problem is not None:
        raise BundleError(f"engines build: {platform_problem}")
    return version


def writable_problem(bundle_dir: Path) -> Optional[str]:
    """Why this process cannot write the overlay (in the bundle, staged beside it), or None."""
    for d in (bundle_dir, bundle_dir.parent):
        if not os.access(d, os.W_OK | os.X_OK):
            return (f"bundle {bundle_dir}: cannot write {d} (the plans go to {DEVICE_DIR}/ in the bundle; an "
                    "installed bundle belongs to root: run with sudo)")
    return None


def check_sources(bundle_dir: Path, requests: Sequence[PlanRequest]) -> None:
    """Every ONNX to build from is the file the signed manifest describes (BundleError otherwise)."""
    for src in dict.fromkeys(r.source for r in requests):
        problem = file_problem(bundle_dir, src.file, src.sha256)
        if problem is not None:
            raise BundleError(f"bundle {bundle_dir}: {problem}; not building from it (re-flash the bundle)")


# -- the build ------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What a build did: one line per plan built, up to date, or failed."""

    bundle: Path
    built: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (f"{len(self.built)} built, {len(self.skipped)} up to date, {len(self.failed)} failed; "
                f"plans in {self.bundle / DEVICE_DIR}")


@contextlib.contextmanager
def _heartbeat(say: Say, label: str, every: float) -> Iterator[None]:
    """``label: still building, N s`` every ``every`` seconds while the block runs."""
    if every <= 0:
        yield
        return
    stop = threading.Event()
    t0 = time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            say(f"{label}: still building, {time.monotonic() - t0:.0f} s")

    thread = threading.Thread(target=beat, name="edgeseg-build-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def selftest_plan(bundle_dir: Path, manifest: Manifest, engine: EngineRecord, staged: Path) -> Optional[SelfTestResult]:
    """The self-test of a plan still in its staging folder, against the bundle's signed reference.

    The record names the plan's final file (``device/x.engine``); the loader opens the staged
    copy through the runtime's own ``open_engine`` (hash checked, TensorRT backend).
    """
    from edgeseg.bundle.selftest import selftest_engine  # noqa: PLC0415 - pulls pycocotools, the pipeline
    from edgeseg.model import Model, open_engine  # noqa: PLC0415 - edgeseg.model imports the bundle package

    local = engine.model_copy(update={"file": staged.name})

    def loader(_d: Path, m: Manifest, _e: EngineRecord) -> Model:
        return open_engine(staged.parent, m, local)

    return selftest_engine(bundle_dir, manifest, engine, loader=loader)


def _current_overlay(
    bundle_dir: Path, manifest: Manifest, raw: bytes, report: BuildReport
) -> Dict[Tuple[int, str], DevicePlan]:
    """The plans of the existing overlay that are sound, by (size, precision); a stale or damaged
    overlay contributes none (it is replaced)."""
    try:
        overlay = read_device_manifest(bundle_dir)
    except BundleError as exc:
        report.notes.append(f"{exc}; replacing it")
        return {}
    if overlay is None:
        return {}
    stale = stale_problem(overlay, raw)
    if stale is not None:
        report.notes.append(f"{DEVICE_DIR}/ was built for another manifest.json; replacing it")
        return {}
    return {p.key: p for p in overlay.plans
            if source_problem(manifest, p) is None
            and file_problem(bundle_dir, p.engine.file, p.engine.sha256, p.engine.bytes) is None}


def build_plans(
    bundle_dir: Path,
    requests: Sequence[PlanRequest],
    device: DeviceInfo,
    *,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    force: bool = False,
    builder: Optional[Builder] = None,
    selftest: Optional[PlanSelfTest] = selftest_plan,
    say: Say = print,
    heartbeat_s: float = HEARTBEAT_S,
) -> BuildReport:
    """Build ``requests`` into the bundle's overlay, one committed plan at a time.

    A plan already built from the same ONNX for this exact device identity and TensorRT version
    is skipped unless ``force``. Each plan is staged with the plans kept so far, self-tested,
    and committed (device/ replaced whole) before the next starts: an interruption loses at most
    the plan in progress. A plan that fails to build or its self-test is not recorded.
    """
    if device.tensorrt is None:
        raise BundleError("engines build: TensorRT is not installed here")
    if builder is None:
        from edgeseg.backends.trt_build import build_engine  # noqa: PLC0415

        builder = build_engine
    identity = builder_record(device, device.tensorrt)
    report = BuildReport(bundle_dir)
    problem = writable_problem(bundle_dir)
    if problem is not None:
        raise BundleError(problem)
    with overlay_lock(bundle_dir):
        manifest, raw = read_signed(bundle_dir)
        check_sources(bundle_dir, requests)
        plans = _current_overlay(bundle_dir, manifest, raw, report)
        for note in report.notes:
            say(f"engines build: {note}")
        n = len(requests)
        for i, req in enumerate(requests, 1):
            label = f"[{i}/{n}] {req.name}"
            held = plans.get(req.key)
            if (not force and held is not None and held.engine.builder == identity
                    and held.built_from == BuiltFrom(file=req.source.file, sha256=req.source.sha256)):
                report.skipped.append(req.file)
                say(f"{label}: up to date (built {held.built or 'earlier'} on this device; --force rebuilds)")
                continue
            keep = [p for k, p in plans.items() if k != req.key]
            say(f"{label}: building {req.precision} at {req.size} from {req.source.file} with TensorRT "
                f"{device.tensorrt} (minutes on an Orin Nano)")
            t0 = time.monotonic()
            with staged_overlay(bundle_dir, keep) as stage:
                try:
                    with _heartbeat(say, label, heartbeat_s):
                        record = builder(bundle_dir / req.source.file, stage.plan_path(req.name), req.precision,
                                         workspace_mib=workspace_mib, timing_cache=stage.timing_cache,
                                         resolution=req.source.resolution, max_batch=req.source.max_batch)
                except Exception as exc:  # noqa: BLE001 - TensorRT's own errors too: one line, next plan
                    line = one_line(exc)
                    report.failed.append(f"{req.file}: {line}")
                    say(f"{label}: FAILED: {line}")
                    continue
                seconds = time.monotonic() - t0
                sha, nbytes = describe_file(stage.plan_path(req.name))
                engine = EngineRecord(
                    file=req.file, sha256=sha, bytes=nbytes, resolution=req.source.resolution,
                    precision=req.precision,
                    quantization=INT8_QUANTIZATION if req.precision == "int8" else None, builder=record,
                    max_batch=req.source.max_batch,
                )
                verdict = selftest(bundle_dir, manifest, engine, stage.plan_path(req.name)) if selftest else None
                if verdict is not None and not verdict.passed:
                    report.failed.append(verdict.one_line())
                    say(f"{label}: built in {seconds:.0f} s, not recorded: {verdict.one_line()}")
                    continue
                plan = DevicePlan(
                    engine=engine, built_from=BuiltFrom(file=req.source.file, sha256=req.source.sha256),
                    built=datetime.now(timezone.utc).isoformat(timespec="seconds"), build_seconds=round(seconds, 1),
                )
                cache = describe_file(stage.timing_cache)[0] if stage.timing_cache.is_file() else None
                overlay = DeviceManifest(bundle=manifest.name, bundle_sha256=manifest_digest(raw),
                                         timing_cache_sha256=cache,
                                         plans=sorted([*keep, plan], key=lambda p: p.key))
                stage.commit(overlay)
            plans[req.key] = plan
            report.built.append(req.file)
            tested = verdict.one_line() if verdict is not None else "no self-test reference: it serves untested"
            say(f"{label}: built in {seconds:.0f} s ({nbytes / (1 << 20):.1f} MB); {tested}")
    return report


# -- the service's first start ----------------------------------------------------------------------


def build_for_service(
    bundle_dir: Path,
    device: DeviceInfo,
    platform_problem: Optional[str],
    precisions: Sequence[str],
    *,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    builder: Optional[Builder] = None,
    selftest: Optional[PlanSelfTest] = selftest_plan,
) -> BuildReport:
    """What ``engines build`` does, for the daemon's first start: the configured precisions where
    the bundle has their ONNX (left out with a note otherwise), progress to the log."""
    version = preflight(device, platform_problem)
    manifest, _ = read_signed(bundle_dir)
    requests, notes = plan_requests(manifest, version, precisions, strict=False)
    for note in notes:
        log.info("engines build: %s", note)
    return build_plans(bundle_dir, requests, device, workspace_mib=workspace_mib, builder=builder,
                       selftest=selftest, say=lambda line: log.info("%s", line))


def one_line(exc: BaseException) -> str:
    """An exception as one line (EdgesegErrors are already; others get their type)."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, EdgesegError) else f"{type(exc).__name__}: {text}".rstrip(": ")
