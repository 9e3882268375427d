"""Plans a device built for itself, kept beside a signed bundle without touching its signature.

A TensorRT plan runs only with the TensorRT version and the GPU model that built it, so the
device builds its own plans from the bundle's ONNX files (``edgeseg engines build``). The signed
``manifest.json`` cannot list them: its signature covers its exact bytes and the signer never
saw these plans. They live in a folder of their own, with a manifest of their own::

    <bundle>/manifest.json(.sig)      signed: the model, the ONNX files, the self-test reference
    <bundle>/device/manifest.json     this module's DeviceManifest
    <bundle>/device/<name>-<size>-<precision>.engine
    <bundle>/device/timing.cache      TensorRT's tactic timings, kept across builds

Trust. The signed manifest vouches for the ONNX files (and the self-test reference). The device
vouches for its plans because it built them itself: from ONNX files whose sha256 it checked
against the signed manifest, in the root-owned engine store, each plan passing the self-test
against the signed reference outputs before it is recorded, and again before it serves
(``edgeseg.model._load_bundle``). The device manifest pins the sha256 of the signed manifest's
bytes, so a re-flashed or edited bundle leaves the overlay stale, and a stale overlay is never
used (``load_merged_manifest`` warns and serves the signed engines; ``engines verify`` reports
it). Nothing here is signed: whoever can write the store can already replace the bundle.

Atomicity. The overlay is replaced whole: the next overlay is staged in a directory beside the
bundle (``.<bundle>~device-staging-*``, hidden from the store's listing), flushed to disk, and
renamed into place; an interrupted build leaves the previous overlay or none, never part of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, List, Literal, Optional, Set, Tuple

from pydantic import Field, model_validator

from edgeseg.bundle.manifest import (
    MANIFEST_NAME,
    EngineRecord,
    Manifest,
    parse_record,
    read_manifest,
)
from edgeseg.bundle.verify import file_problem, sha256_file
from edgeseg.durable import fsync_dir
from edgeseg.errors import BundleError
from edgeseg.strict import StrictModel

log = logging.getLogger(__name__)

#: The bundle's one reserved folder: everything under it is the device's, verified by its manifest.
DEVICE_DIR: Final = "device"
DEVICE_MANIFEST: Final = f"{DEVICE_DIR}/{MANIFEST_NAME}"
TIMING_CACHE_NAME: Final = "timing.cache"
TIMING_CACHE: Final = f"{DEVICE_DIR}/{TIMING_CACHE_NAME}"
PLAN_SUFFIX: Final = ".engine"
DEVICE_FORMAT: Final = "edgeseg-device-plans"
DEVICE_VERSION: Final = 1
#: Staging and old overlays sit beside the bundle, named after it; '~' is in no bundle name
#: (``edgeseg.flash.store``'s name rule), so one bundle's prefix never matches another's.
_STAGING: Final = "~device-staging-"
_OLD: Final = "~device-old-"
_HEX64: Final = r"^[0-9a-f]{64}$"


def is_device_path(name: str) -> bool:
    """``name`` (relative, POSIX) lies in the device's folder (``device`` or ``device/...``)."""
    parts = PurePosixPath(name).parts
    return bool(parts) and parts[0] == DEVICE_DIR


def manifest_digest(raw: bytes) -> str:
    """The sha256 of the signed manifest's bytes: what ties an overlay to one bundle."""
    return hashlib.sha256(raw).hexdigest()


class BuiltFrom(StrictModel):
    """The bundle file a plan was built from, as the signed manifest describes it."""

    file: str = Field(min_length=1, description="the bundle's ONNX file")
    sha256: str = Field(pattern=_HEX64)


class DevicePlan(StrictModel):
    """One plan the device built: its engine record (as a signed one), and what it came from."""

    engine: EngineRecord
    built_from: BuiltFrom
    built: str = Field("", description="when it was built (ISO 8601, UTC)")
    build_seconds: float = Field(0.0, ge=0)

    @property
    def key(self) -> Tuple[int, str]:
        """(size, precision): the device keeps one plan of each."""
        return max(self.engine.resolution), self.engine.precision


class DeviceManifest(StrictModel):
    """``<bundle>/device/manifest.json``."""

    format: Literal["edgeseg-device-plans"] = DEVICE_FORMAT
    version: Literal[1] = DEVICE_VERSION
    bundle: str = Field(min_length=1, description="the signed manifest's name")
    bundle_sha256: str = Field(pattern=_HEX64, description="sha256 of the signed manifest.json's bytes")
    timing_cache_sha256: Optional[str] = Field(None, pattern=_HEX64)
    plans: List[DevicePlan] = Field(default_factory=list)

    @model_validator(mode="after")
    def _plans_are_device_plans(self) -> DeviceManifest:
        seen: Set[Tuple[int, str]] = set()
        for p in self.plans:
            path = PurePosixPath(p.engine.file)
            if len(path.parts) != 2 or path.parts[0] != DEVICE_DIR or path.suffix != PLAN_SUFFIX:
                raise ValueError(f"plan {p.engine.file}: expected {DEVICE_DIR}/<name>{PLAN_SUFFIX}")
            if path.name in (MANIFEST_NAME, TIMING_CACHE_NAME) or path.name.startswith("."):
                raise ValueError(f"plan {p.engine.file}: reserved name")
            if p.engine.runtime != "tensorrt":
                raise ValueError(f"plan {p.engine.file}: a device plan is a TensorRT plan, not {p.engine.runtime}")
            if p.key in seen:
                raise ValueError(f"plan {p.engine.file}: a second {p.key[1]} plan at {p.key[0]}")
            seen.add(p.key)
        if len({p.engine.file for p in self.plans}) != len(self.plans):
            raise ValueError("two plans name one file")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def plan(self, size: int, precision: str) -> Optional[DevicePlan]:
        return next((p for p in self.plans if p.key == (size, precision)), None)


def read_device_manifest(bundle_dir: Path) -> Optional[DeviceManifest]:
    """The bundle's device manifest; None when it has none; BundleError (one line) when unusable."""
    path = bundle_dir / DEVICE_MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{DEVICE_MANIFEST}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_record(text, DeviceManifest, DEVICE_MANIFEST)


def signed_sources(manifest: Manifest) -> dict[str, str]:
    """Every ONNX file the signed manifest vouches for, name -> sha256 (engines and extra files)."""
    out = {e.file: e.sha256 for e in manifest.engines if e.runtime == "onnxruntime"}
    out.update({n: sha for n, sha in manifest.extra_files.items() if n.endswith(".onnx")})
    return out


def source_problem(manifest: Manifest, plan: DevicePlan) -> Optional[str]:
    """Why ``plan`` was not built from a file of this signed manifest, or None."""
    sha = signed_sources(manifest).get(plan.built_from.file)
    if sha is None:
        return f"{plan.engine.file}: built from {plan.built_from.file}, which the signed manifest does not list"
    if sha != plan.built_from.sha256:
        return f"{plan.engine.file}: built from another {plan.built_from.file} than the signed manifest's"
    return None


def stale_problem(overlay: DeviceManifest, raw: bytes) -> Optional[str]:
    """Why ``overlay`` does not belong to the signed manifest whose bytes are ``raw``, or None."""
    digest = manifest_digest(raw)
    if overlay.bundle_sha256 != digest:
        return (f"{DEVICE_MANIFEST}: built for another manifest.json (sha256 {overlay.bundle_sha256[:12]}..., this "
                f"one {digest[:12]}...): stale, rebuild with 'edgeseg engines build --force' or remove {DEVICE_DIR}/")
    return None


def overlay_problems(bundle_dir: Path, manifest: Manifest, raw: bytes) -> List[str]:
    """Everything wrong with the bundle's device folder (empty when it has none or it is sound).

    The store's check of an installed bundle: the folder holds exactly its manifest, the plans
    it lists (size and sha256 as recorded, each built from a file of this signed manifest) and
    the timing cache it recorded; and it belongs to this signed manifest.
    """
    folder = bundle_dir / DEVICE_DIR
    if not folder.exists() and not folder.is_symlink():
        return []
    if folder.is_symlink() or not folder.is_dir():
        return [f"{DEVICE_DIR}: not a directory"]
    try:
        overlay = read_device_manifest(bundle_dir)
    except BundleError as exc:
        return [str(exc)]
    if overlay is None:
        return [f"{DEVICE_DIR}/: no {MANIFEST_NAME} (its files are unverified)"]
    stale = stale_problem(overlay, raw)
    if stale is not None:
        return [stale]
    problems: List[str] = []
    expected = {DEVICE_MANIFEST}
    for p in overlay.plans:
        expected.add(p.engine.file)
        problems += [x for x in (source_problem(manifest, p),
                                 file_problem(bundle_dir, p.engine.file, p.engine.sha256, p.engine.bytes)) if x]
    if overlay.timing_cache_sha256 is not None:
        expected.add(TIMING_CACHE)
        problem = file_problem(bundle_dir, TIMING_CACHE, overlay.timing_cache_sha256)
        if problem is not None:
            problems.append(problem)
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(bundle_dir).as_posix()
        if (f.is_file() or f.is_symlink()) and rel not in expected:
            problems.append(f"{rel}: not in {DEVICE_MANIFEST} (added after the build)")
    return problems


# -- the runtime's view -----------------------------------------------------------------------

_warned: Set[Tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(bundle_dir: Path, message: str) -> None:
    """Warn once per bundle and message: the adaptive ladder reads the manifest per resolution."""
    key = (str(bundle_dir), message)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("bundle %s: %s; serving its signed engines only", bundle_dir, message)


def read_signed(bundle_dir: Path) -> Tuple[Manifest, bytes]:
    """The signed manifest and its bytes, read as every command reads them (``read_manifest``:
    no link, UTF-8, valid); BundleError naming the bundle, as ``load_manifest``."""
    try:
        return read_manifest(bundle_dir)
    except BundleError as exc:
        raise BundleError(f"bundle {bundle_dir}: {exc}") from None


def merge(manifest: Manifest, overlay: Optional[DeviceManifest]) -> Manifest:
    """The signed manifest with the overlay's plans added to its engines."""
    if overlay is None or not overlay.plans:
        return manifest
    return manifest.model_copy(update={"engines": [*manifest.engines, *(p.engine for p in overlay.plans)]})


def load_merged_manifest(bundle_dir: str | Path) -> Manifest:
    """What the runtime serves from: the signed engines plus the device's own plans.

    The overlay is left out, with a warning (once per bundle), when it cannot be read or
    belongs to another version of the bundle; a plan built from a file the signed manifest does
    not vouch for is left out likewise. Plan files are hashed where every engine is, when one is
    loaded (``edgeseg.model.open_engine``), not here: the ladder reads this per resolution.
    """
    d = Path(bundle_dir)
    manifest, raw = read_signed(d)
    try:
        overlay = read_device_manifest(d)
    except BundleError as exc:
        _warn_once(d, str(exc))
        return manifest
    if overlay is None:
        return manifest
    stale = stale_problem(overlay, raw)
    if stale is not None:
        _warn_once(d, stale)
        return manifest
    good = []
    for p in overlay.plans:
        problem = source_problem(manifest, p)
        if problem is None:
            good.append(p)
        else:
            _warn_once(d, problem)
    return merge(manifest, overlay.model_copy(update={"plans": good}))


# -- writing: one overlay at a time, replaced whole ---------------------------------------------


@contextlib.contextmanager
def overlay_lock(bundle_dir: Path) -> Iterator[None]:
    """One build per bundle at a time (flock on the bundle directory); stale staging removed."""
    try:
        fd = os.open(bundle_dir, os.O_RDONLY)
    except OSError as exc:
        raise BundleError(f"bundle {bundle_dir}: cannot open ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BundleError(f"bundle {bundle_dir}: another 'engines build' is writing its {DEVICE_DIR}/") from None
        for prefix in (_STAGING, _OLD):  # left by a build that was killed
            for p in sorted(bundle_dir.parent.iterdir()):
                if not p.name.startswith(f".{bundle_dir.name}{prefix}"):
                    continue
                if prefix == _OLD and (p / DEVICE_DIR).is_dir() and not (bundle_dir / DEVICE_DIR).exists():
                    os.rename(p / DEVICE_DIR, bundle_dir / DEVICE_DIR)  # killed between the two renames
                shutil.rmtree(p, ignore_errors=True)
        yield
    finally:
        os.close(fd)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@dataclass
class OverlayStage:
    """The next overlay being staged beside the bundle; ``commit`` puts it in place whole."""

    bundle_dir: Path
    dir: Path
    committed: bool = False

    def plan_path(self, name: str) -> Path:
        return self.dir / name

    @property
    def timing_cache(self) -> Path:
        return self.dir / TIMING_CACHE_NAME

    def commit(self, overlay: DeviceManifest) -> None:
        """Write the manifest, flush everything, and swap the staged folder in for ``device/``."""
        missing = [p.engine.file for p in overlay.plans if not (self.dir / PurePosixPath(p.engine.file).name).is_file()]
        if missing:
            raise BundleError(f"bundle {self.bundle_dir}: staged overlay lacks {', '.join(missing)}")
        if overlay.timing_cache_sha256 is None and self.timing_cache.exists():
            self.timing_cache.unlink()
        (self.dir / MANIFEST_NAME).write_text(overlay.to_json(), encoding="utf-8")
        for f in self.dir.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            f.chmod(0o444)
        self.dir.chmod(0o755)  # mkdtemp made it 0700; the daemon may run as another user
        fsync_dir(self.dir)
        target = self.bundle_dir / DEVICE_DIR
        old: Optional[Path] = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{self.bundle_dir.name}{_OLD}", dir=self.bundle_dir.parent))
            os.rename(target, old / DEVICE_DIR)
        try:
            os.rename(self.dir, target)
        except BaseException:
            if old is not None:  # put the previous overlay back: previous or new, never none
                os.rename(old / DEVICE_DIR, target)
                shutil.rmtree(old, ignore_errors=True)
            raise
        self.committed = True
        fsync_dir(self.bundle_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(self.bundle_dir.parent)


@contextlib.contextmanager
def staged_overlay(
    bundle_dir: Path, keep: Sequence[DevicePlan], keep_timing_cache: bool = True
) -> Iterator[OverlayStage]:
    """A staging folder beside the bundle holding the plans in ``keep`` (hard links) and the
    timing cache; removed on leaving unless committed. Call inside ``overlay_lock``."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{bundle_dir.name}{_STAGING}", dir=bundle_dir.parent))
    except OSError as exc:
        raise BundleError(f"bundle {bundle_dir}: cannot write in {bundle_dir.parent} ({exc.strerror})") from None
    stage = OverlayStage(bundle_dir, staging)
    try:
        for p in keep:
            name = PurePosixPath(p.engine.file).name
            _link_or_copy(bundle_dir / p.engine.file, staging / name)
        cache = bundle_dir / TIMING_CACHE
        if keep_timing_cache and cache.is_file():
            shutil.copyfile(cache, stage.timing_cache)
        yield stage
    finally:
        if not stage.committed:
            shutil.rmtree(staging, ignore_errors=True)


def describe_file(path: Path) -> Tuple[str, int]:
    """sha256 and size of a staged file, for its record."""
    return sha256_file(path), path.stat().st_size
