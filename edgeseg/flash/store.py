"""The on-device engine store: installed bundles, the active one, the one to roll back to.

Layout (``ROOT`` is ``engines.root``, by default ``/var/lib/edgeseg/engines``)::

    ROOT/
      bundles/<name>@<hash>/    installed bundles, never changed after install: manifest.json,
                                manifest.json.sig when signed, and exactly the files it lists;
        device/                 the one exception: TensorRT plans built on this device from the
                                bundle's ONNX (``edgeseg engines build``), with their own
                                manifest (``edgeseg.bundle.local``), replaced whole per build
      active   -> bundles/...   what the daemon runs (relative symlink)
      previous -> bundles/...   what ``rollback`` returns to (relative symlink)
      .staging-*/               an install in progress
      .trash-*/                 a bundle being removed
      .lock                     held (flock) by the install/activate/rollback/remove that runs

``<name>`` is the manifest's ``name``; ``<hash>`` the first 12 hex digits of the sha256 of the
manifest's bytes. The manifest holds the sha256 of every file, so the directory name pins the
whole bundle: two bundles with one name never collide, and the same bundle installs once.

Guarantees:

- An install copies the manifest, its signature and the files the manifest lists (nothing else)
  into ``.staging-*``, verifies everything there (see ``inspect_bundle``) and only then renames
  the staging directory into ``bundles/``. Any failure, KeyboardInterrupt included, removes the
  staging directory; a crash leaves at most a stale one, removed by the next operation. The
  active bundle is never touched by an install that is refused.
- ``active`` and ``previous`` are switched by creating a new symlink and ``os.replace``-ing it
  over the old one, so a reader sees the old or the new target, never none. ``previous`` is
  switched before ``active``: a crash in between leaves the old bundle running.
- ``activate`` and ``rollback`` re-verify the bundle they switch to (hashes, unexpected files,
  signature when a key is configured, an engine that runs here) before switching.
- An install self-tests every engine that runs here against the bundle's reference (the
  decoded instances of its fp32 ONNX, ``edgeseg.bundle.selftest``) on the staged copy: a bundle
  none of whose engines passes is refused, one with failing engines is installed with a note
  per failure (the runtime falls back to the engines that pass). A bundle without a reference
  (exported before self-tests) installs with a warning that its engines were not tested.
- The active bundle cannot be removed; the previous one only with ``force``.
- Every refusal is a BundleError whose one-line message names the bundle or file and the reason.

The device probe is the one hardware-dependent piece: ``EngineStore(probe=...)`` takes any
function returning a DeviceInfo (tests pass a fixed one; by default ``probe_device``). The
self-test loads engines: ``EngineStore(selftest=...)`` takes the function that tests one (by
default ``selftest_engine``; None skips the self-test).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Final, Optional

from edgeseg.bundle.device import DeviceInfo, probe_device
from edgeseg.bundle.local import is_device_path, overlay_problems
from edgeseg.bundle.manifest import (
    MANIFEST_NAME,
    EngineRecord,
    Manifest,
    link_on_the_way,
    link_refusal,
    open_in_bundle,
    read_manifest,
)
from edgeseg.bundle.selftest import SelfTestResult, selftest_engine
from edgeseg.bundle.verify import file_problem, partition_engines
from edgeseg.durable import fsync_dir
from edgeseg.errors import BundleError
from edgeseg.flash.signature import SIGNATURE_NAME, signature_problem

if TYPE_CHECKING:
    from edgeseg.model import LoadOptions

log = logging.getLogger(__name__)

BUNDLES_DIR: Final = "bundles"
ACTIVE: Final = "active"
PREVIOUS: Final = "previous"
LOCK_NAME: Final = ".lock"
STAGING_PREFIX: Final = ".staging-"
TRASH_PREFIX: Final = ".trash-"
LINK_TMP_PREFIX: Final = ".link-"
#: The intent of a switch in progress: ``{"active": ..., "previous": ...}`` as they were before it.
JOURNAL_NAME: Final = ".switch.json"
#: Hex digits of the manifest's sha256 in an installed bundle's directory name.
HASH_CHARS: Final = 12
#: A bundle name must be a plain directory name (it becomes one); '@' separates the hash.
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_RESERVED: Final = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
_MB: Final = 1 << 20

#: The hardware seam: a function telling what this device can run.
DeviceProbe = Callable[[], DeviceInfo]
#: Tests one engine of a (staged) bundle; None when the bundle has no reference for it.
EngineSelfTest = Callable[[Path, Manifest, EngineRecord], Optional[SelfTestResult]]
#: Loads an installed bundle as the daemon will and closes it again: one line naming the engine
#: that serves, or an exception saying why nothing loads.
BundleLoader = Callable[[Path], str]


def load_as_the_daemon(path: Path, options: Optional[LoadOptions] = None, imgsz: Optional[int] = None) -> str:
    """Load the bundle at ``path`` as the daemon's configuration loads it (``options``: its
    ``edgeseg.app.load_options``; ``imgsz``: its ``model.imgsz``): the engine choice, its hash,
    its self-test and the fallback to the next engine, exactly as a reload will run them. Raises
    when nothing loads."""
    from edgeseg.model import LoadOptions  # lazy: imports the backends

    model = (options if options is not None else LoadOptions()).load(path, imgsz=imgsz)
    try:
        e = model.engine
        return f"{e.file} ({describe_engine(e)})" if e is not None else model.spec.name
    finally:
        model.close()


def selftest_problems(
    path: Path, manifest: Manifest, usable: tuple[EngineRecord, ...], device: DeviceInfo, test: EngineSelfTest,
    *, allow_fallback: bool = True,
) -> tuple[list[str], list[str]]:
    """Self-test every engine in ``usable``: (problems that refuse the bundle, notes).

    Refused: no engine passes; or, unless ``allow_fallback``, on a device with TensorRT where the
    bundle has TensorRT engines, none of those passes (it would run on ONNX Runtime only, as
    ``inspect_bundle`` refuses when none fits). Each failure is one note, the figures in one line.
    """
    if manifest.selftest is None:
        log.warning("bundle %s: no self-test reference (exported before self-tests): engines installed untested",
                    manifest.name)
        return [], []
    results = [(e, test(path, manifest, e)) for e in usable]
    failed = [r for _, r in results if r is not None and not r.passed]
    notes = [f"{r.one_line()}; the runtime falls back to an engine that passes" for r in failed]
    passing = [e for e, r in results if r is None or r.passed]
    if failed and not passing:
        return [f"every engine that runs here failed its self-test: {'; '.join(r.one_line() for r in failed)}"], []
    if (
        failed and not allow_fallback and device.tensorrt is not None
        and any(e.runtime == "tensorrt" for e in usable) and not any(e.runtime == "tensorrt" for e in passing)
    ):
        lines = "; ".join(r.one_line() for r in failed)
        return [f"none of its TensorRT engines passes its self-test ({lines}); it would run on ONNX Runtime only "
                "(--allow-fallback installs it anyway)"], []
    return [], notes


def bundle_id(manifest: Manifest, manifest_bytes: bytes) -> str:
    """The installed directory name of a bundle: ``<name>@<first 12 hex of sha256(manifest)>``."""
    return f"{manifest.name}@{hashlib.sha256(manifest_bytes).hexdigest()[:HASH_CHARS]}"


def _name_problem(name: str) -> str | None:
    """Why a file name of the manifest cannot be a file of the bundle, or None."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name in ("", "."):
        return f"{name}: file names must stay inside the bundle"
    if name in _RESERVED:
        return f"{name}: reserved name, cannot be an engine or extra file"
    return None


def linked_names(root: Path, names: list[str]) -> list[str]:
    """The names of ``names`` that are, or pass through, a symbolic link under ``root``."""
    inside = [n for n in names if n in _RESERVED or _name_problem(n) is None]  # others are refused by name
    return [n for n in inside if link_on_the_way(root, PurePosixPath(n).parts)]


def _listed_files(manifest: Manifest) -> list[str]:
    names = [e.file for e in manifest.engines] + list(manifest.extra_files)
    return list(dict.fromkeys(names))


def describe_engine(e: EngineRecord) -> str:
    """``tensorrt fp16 640x640 (TensorRT 10.3.0.30, Orin sm87)`` or ``onnxruntime int8 320x320``."""
    b = e.builder
    text = f"{b.runtime} {e.precision} {e.resolution[0]}x{e.resolution[1]}"
    if b.runtime == "tensorrt":
        cc = f" sm{b.compute_capability[0]}{b.compute_capability[1]}" if b.compute_capability else ""
        text += f" (TensorRT {b.version}, {b.gpu or 'any GPU'}{cc})"
    return text


@dataclass(frozen=True)
class Inspection:
    """Everything checked about one bundle directory; ``problems`` empty means it passes."""

    path: Path
    manifest: Optional[Manifest] = None
    manifest_bytes: bytes = b""
    problems: tuple[str, ...] = ()
    #: Engines that run on this device, and "file: reason" for those that do not.
    usable: tuple[EngineRecord, ...] = ()
    unusable: tuple[str, ...] = ()
    signed: bool = False
    signature_checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bundle_id(self) -> str:
        if self.manifest is None:
            raise BundleError(f"bundle {self.path}: has no valid manifest")
        return bundle_id(self.manifest, self.manifest_bytes)


def inspect_bundle(
    path: str | Path,
    device: DeviceInfo,
    public_key: str | Path | None = None,
    *,
    allow_fallback: bool = True,
    exact_files: bool = False,
) -> Inspection:
    """Every check on one bundle directory: manifest, signature, every file, this device.

    - the manifest reads (``read_manifest``: no link, UTF-8, valid) and its name can name a directory;
    - with ``public_key``: ``manifest.json.sig`` exists and verifies over the manifest's bytes;
    - every listed file stays inside the bundle, exists, and has the manifest's size and sha256;
    - ``exact_files``: no file besides those (installed bundles hold nothing unverified), except
      in ``device/``, the plans this device built, which must match its own manifest
      (``edgeseg.bundle.local.overlay_problems``);
    - at least one engine runs on ``device``; and unless ``allow_fallback``, on a device with
      TensorRT a bundle of TensorRT engines needs one that fits, not only ONNX Runtime ones.

    A public key that cannot be loaded raises BundleError: the configuration, not the bundle, is
    at fault, and nothing may pass unchecked.
    """
    d = Path(path)
    try:
        manifest, raw = read_manifest(d)
    except BundleError as exc:
        return Inspection(d, problems=(str(exc),))

    problems: list[str] = []
    if not _NAME_RE.match(manifest.name):
        problems.append(
            f"{MANIFEST_NAME}: bundle name {manifest.name[:40]!r} must be letters, digits, '.', '_', '+', '-' "
            "(at most 100, not starting with '.')"
        )
    # Links first, and never followed: what a link points to (its size, its hash) stays unsaid.
    linked = set(linked_names(d, [SIGNATURE_NAME, *_listed_files(manifest)]))
    problems += [link_refusal(n) for n in [SIGNATURE_NAME, *_listed_files(manifest)] if n in linked]
    signed = SIGNATURE_NAME not in linked and (d / SIGNATURE_NAME).is_file()
    if public_key is not None and SIGNATURE_NAME not in linked:
        sig = signature_problem(d, raw, public_key)
        if sig:
            problems.append(sig)
    problems += [f"{n}: reserved name, cannot be an engine or extra file" for n in _listed_files(manifest)
                 if n in _RESERVED or is_device_path(n)]
    unlinked: list[tuple[str, str, Optional[int]]] = [
        (e.file, e.sha256, e.bytes) for e in manifest.engines if e.file not in linked]
    unlinked += [(n, sha, None) for n, sha in manifest.extra_files.items() if n not in linked]
    checked = (file_problem(d, n, sha, size) for n, sha, size in unlinked)  # also names that leave the bundle
    problems += [p for p in checked if p]
    if exact_files:
        expected = set(_listed_files(manifest)) | _RESERVED
        for f in sorted(d.rglob("*")):
            rel = f.relative_to(d).as_posix()
            if (f.is_file() or f.is_symlink()) and rel not in expected and not is_device_path(rel):
                problems.append(f"{rel}: not in the manifest (added after install)")
        problems += overlay_problems(d, manifest, raw)  # device/: plans built here, verified by their manifest

    usable, unusable = partition_engines(manifest, device)
    if not usable:
        problems.append(f"no engine can run on this device ({device.describe()}): {'; '.join(unusable)}")
    elif (
        not allow_fallback
        and device.tensorrt is not None
        and any(e.runtime == "tensorrt" for e in manifest.engines)
        and not any(e.runtime == "tensorrt" for e in usable)
    ):
        trt = "; ".join(u for u in unusable)
        problems.append(
            f"none of its TensorRT engines fits this device ({trt}); it would run on ONNX Runtime only "
            "(--allow-fallback installs it anyway)"
        )
    return Inspection(
        d, manifest, raw, tuple(problems), tuple(usable), tuple(unusable),
        signed=signed, signature_checked=public_key is not None,
    )


@dataclass(frozen=True)
class InstalledBundle:
    """One directory of ``ROOT/bundles`` as listed (read, not verified)."""

    id: str
    path: Path
    manifest: Optional[Manifest]
    error: Optional[str] = None
    active: bool = False
    previous: bool = False


@dataclass(frozen=True)
class Switch:
    """What ``active`` pointed to before and after; ``changed`` False when it already was.

    ``was_previous`` is what ``previous`` pointed to before, so that ``undo`` can put both back.
    ``loaded`` names the engine the test load chose (empty when no loader is configured).
    """

    active: str
    was_active: Optional[str]
    changed: bool
    was_previous: Optional[str] = None
    loaded: str = ""


@dataclass(frozen=True)
class InstallResult:
    bundle_id: str
    path: Path
    inspection: Inspection
    #: The same bundle was installed and intact: nothing copied.
    already_installed: bool = False
    #: The same bundle was installed but damaged: replaced by the verified copy.
    repaired: bool = False
    switch: Optional[Switch] = None
    notes: list[str] = field(default_factory=list)


def _seal(tree: Path) -> None:
    """Flush a staged bundle to disk; files read-only, directories readable by the daemon's user."""
    for p in sorted(tree.rglob("*"), reverse=True):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            p.chmod(0o444)
        elif p.is_dir():
            p.chmod(0o755)
            fsync_dir(p)
    tree.chmod(0o755)  # mkdtemp made it 0700; the daemon may run as another user
    fsync_dir(tree)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class EngineStore:
    """The bundles under one root and the operations on them (see the module docstring)."""

    def __init__(
        self,
        root: str | Path,
        public_key: str | Path | None = None,
        probe: DeviceProbe = probe_device,
        selftest: EngineSelfTest | None = selftest_engine,
        loader: BundleLoader | None = load_as_the_daemon,
    ):
        self.root = Path(root)
        self.public_key = Path(public_key) if public_key is not None else None
        self._probe = probe
        self._selftest = selftest
        self._loader = loader
        self._device: DeviceInfo | None = None

    @property
    def device(self) -> DeviceInfo:
        if self._device is None:
            self._device = self._probe()
        return self._device

    @property
    def bundles_dir(self) -> Path:
        return self.root / BUNDLES_DIR

    # -- reading -----------------------------------------------------------------------------

    def _link(self, name: str) -> str | None:
        """The bundle id a link points to (whether or not that bundle exists), None when unset."""
        try:
            target = os.readlink(self.root / name)
        except OSError:
            return None
        return PurePosixPath(target).name

    def active_id(self) -> str | None:
        return self._link(ACTIVE)

    def previous_id(self) -> str | None:
        return self._link(PREVIOUS)

    def ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.bundles_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BundleError(f"engine root {self.root}: cannot list ({exc.strerror})") from None

    def installed(self) -> list[InstalledBundle]:
        active, previous = self.active_id(), self.previous_id()
        out = []
        for bid in self.ids():
            path = self.bundles_dir / bid
            manifest: Manifest | None = None
            error: str | None = None
            try:
                manifest = read_manifest(path)[0]
            except BundleError as exc:
                error = str(exc)
            out.append(InstalledBundle(bid, path, manifest, error, bid == active, bid == previous))
        return out

    def resolve(self, ref: str) -> str:
        """An installed bundle id from an id, ``active``/``previous``, a bundle name or an id prefix."""
        ids = self.ids()
        if ref in (ACTIVE, PREVIOUS):
            bid = self._link(ref)
            if bid is None or bid not in ids:
                raise BundleError(f"engine root {self.root}: no {ref} bundle")
            return bid
        if ref in ids:
            return ref
        for matches in ([i for i in ids if i.split("@", 1)[0] == ref], [i for i in ids if i.startswith(ref)]):
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise BundleError(f"bundle {ref!r}: ambiguous, installed are {', '.join(matches)}; name one by id")
        have = ", ".join(ids) if ids else "none"
        raise BundleError(f"bundle {ref!r}: not installed in {self.root} (installed: {have})")

    def inspect(self, path: str | Path, *, allow_fallback: bool = True) -> Inspection:
        """All checks on a bundle directory that is not (yet) installed."""
        return inspect_bundle(path, self.device, self.public_key, allow_fallback=allow_fallback)

    def inspect_installed(self, bid: str) -> Inspection:
        """All checks on an installed bundle, also that its manifest still matches its directory name."""
        path = self.bundles_dir / bid
        check = inspect_bundle(path, self.device, self.public_key, exact_files=True)
        if check.manifest is not None and check.bundle_id != bid:
            extra = f"{MANIFEST_NAME}: does not match the bundle's id {bid} (manifest modified after install)"
            return Inspection(
                check.path, check.manifest, check.manifest_bytes, (*check.problems, extra), check.usable,
                check.unusable, check.signed, check.signature_checked,
            )
        return check

    def link_problems(self) -> list[str]:
        """``active``/``previous`` links that point at no installed bundle, an unrepaired switch."""
        ids = self.ids()
        out = []
        if (self.root / JOURNAL_NAME).exists():
            out.append(f"{self.root / JOURNAL_NAME}: a switch was interrupted and is not repaired yet "
                       "(any install/activate/rollback/remove, or list/verify with write access, repairs it)")
        for name in (ACTIVE, PREVIOUS):
            bid = self._link(name)
            if bid is not None and bid not in ids:
                out.append(f"{self.root / name}: points to {bid}, which is not installed")
        return out

    # -- changing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, create: bool) -> Iterator[None]:
        """One changing operation at a time; stale staging/trash from a crash removed first."""
        if not create and not self.root.is_dir():
            raise BundleError(f"engine root {self.root}: does not exist (nothing installed)")
        try:
            self.bundles_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BundleError(
                f"engine root {self.root}: cannot write ({exc.strerror}); run as root or set engines.root"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BundleError(
                    f"engine root {self.root}: another install/activate/rollback/remove is running "
                    f"({self.root / LOCK_NAME} is locked)"
                ) from None
            for p in self.root.iterdir():
                if p.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                    _remove_tree(p)
                elif p.name.startswith(LINK_TMP_PREFIX):
                    p.unlink(missing_ok=True)
            self._repair()
            yield
        finally:
            os.close(fd)

    def _point(self, link: str, bid: str) -> None:
        """Make ``ROOT/link`` point to ``bundles/bid`` atomically."""
        tmp = self.root / f"{LINK_TMP_PREFIX}{link}-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(f"{BUNDLES_DIR}/{bid}", tmp)
        os.replace(tmp, self.root / link)
        fsync_dir(self.root)

    def _journal(self, active: str | None, previous: str | None) -> None:
        """Record both links as they are, durably, before the first of the two switches."""
        path = self.root / JOURNAL_NAME
        tmp = self.root / f"{LINK_TMP_PREFIX}journal-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"active": active, "previous": previous}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.root)

    def _set_links(self, active: str | None, previous: str | None) -> None:
        """Point (or unset) both links; ``previous`` first, so ``active`` is never left dangling."""
        for name, bid in ((PREVIOUS, previous), (ACTIVE, active)):
            if bid is None:
                (self.root / name).unlink(missing_ok=True)
                fsync_dir(self.root)
            elif self._link(name) != bid:
                self._point(name, bid)

    def _repair(self) -> None:
        """Undo a switch a crash interrupted: put both links back as the journal recorded them.

        Back, not forward: the command that switched never said it had, nor told the daemon, so
        the state the user (and a daemon reading ``active`` at start) knows is the recorded one.
        A journal that cannot be read (it is written whole by rename, so only a damaged disk
        makes one) is left for ``verify`` to report; nothing is guessed.
        """
        path = self.root / JOURNAL_NAME
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: an interrupted switch whose journal cannot be read ({exc}); "
                              "set the active/previous links by hand and delete it") from None
        active, previous = (doc.get(k) if isinstance(doc, dict) else None for k in (ACTIVE, PREVIOUS))
        ids = self.ids()
        if not all(v is None or (isinstance(v, str) and v in ids) for v in (active, previous)):
            raise BundleError(f"{path}: an interrupted switch names bundles that are not installed ({doc}); "
                              "set the active/previous links by hand and delete it")
        self._set_links(active, previous)
        path.unlink()
        fsync_dir(self.root)
        log.warning("engine root %s: repaired a switch a crash interrupted: active %s, previous %s",
                    self.root, active or "none", previous or "none")

    def repair(self) -> bool:
        """Repair an interrupted switch if there is one (for ``list``/``verify``); False when one is
        left because this user may not change the store (``link_problems`` then reports it)."""
        if not (self.root / JOURNAL_NAME).exists():
            return True
        try:
            with self._locked(create=False):
                return True
        except BundleError as exc:
            log.warning("%s", exc)
            return False

    def _test_load(self, path: Path, bid: str, verb: str) -> str:
        """Load ``path`` as the daemon will before switching to it; refuse when nothing loads."""
        if self._loader is None:
            return ""
        try:
            return self._loader(path)
        except Exception as exc:  # any failure to load is the daemon's refusal: say it in one line
            text = str(exc).strip().splitlines()
            why = text[0] if text else type(exc).__name__
            raise BundleError(f"bundle {bid}: {verb}: it does not load as the daemon would load it: {why}") from None

    def _switch_to(self, bid: str, verb: str = "not activated", loaded: str | None = None) -> Switch:
        """Journal, then switch ``previous`` and ``active``; ``bid`` is test-loaded first unless
        ``loaded`` says it was (the staged copy of an install)."""
        old, prev = self.active_id(), self.previous_id()
        if old == bid:
            return Switch(bid, old, changed=False, was_previous=prev)
        if loaded is None:
            loaded = self._test_load(self.bundles_dir / bid, bid, verb)
        if old is not None and (self.bundles_dir / old).is_dir():
            new_prev: str | None = old
        else:
            new_prev = None if prev == bid else prev
        self._journal(old, prev)
        self._set_links(bid, new_prev)
        (self.root / JOURNAL_NAME).unlink()
        fsync_dir(self.root)
        return Switch(bid, old, changed=True, was_previous=prev, loaded=loaded)

    def undo(self, switch: Switch) -> bool:
        """Put ``active``/``previous`` back as they were before ``switch`` (the daemon refused it).

        Only while ``active`` is still the switch's: a later switch by someone else is left alone
        (False). Journaled as any switch is.
        """
        if not switch.changed:
            return False
        with self._locked(create=False):
            if self.active_id() != switch.active:
                return False
            ids = self.ids()
            previous = switch.was_previous if switch.was_previous in ids else None
            active = switch.was_active if switch.was_active in ids else None
            self._journal(switch.active, self.previous_id())
            self._set_links(active, previous)
            (self.root / JOURNAL_NAME).unlink()
            fsync_dir(self.root)
            return True

    def _stage(self, src: Path, staging: Path) -> None:
        """Copy the manifest, its signature and the files it lists from ``src`` into ``staging``.

        Only what would make copying itself unsafe or pointless is refused here; everything
        else is judged on the staged copy. Every file is opened without following links
        (``open_in_bundle``): a link is refused by name, and nothing about what it points to
        (its size, its hash, whether it exists) reaches a message. The manifest is read as every
        command reads it (``read_manifest``), and its bytes are copied as read.
        """
        try:
            manifest, raw = read_manifest(src)
        except BundleError as exc:
            raise BundleError(f"bundle {src}: refused: {exc}") from None
        (staging / MANIFEST_NAME).write_bytes(raw)
        names = _listed_files(manifest)
        bad = [p for p in (_name_problem(n) for n in names) if p]
        if bad:
            raise BundleError(f"bundle {src}: refused: {'; '.join(bad)}")
        needed = sum(e.bytes for e in manifest.engines)
        free = shutil.disk_usage(self.root).free  # what an unprivileged writer may use
        if needed > free:
            raise BundleError(
                f"bundle {src}: refused: needs {needed / _MB:.1f} MB, {free / _MB:.1f} MB free in {self.root}"
            )
        for name in [SIGNATURE_NAME, *names]:
            try:
                fd = open_in_bundle(src, name)
            except BundleError as exc:
                raise BundleError(f"bundle {src}: refused: {exc}") from None
            except OSError:  # unreadable: left out, and judged on the staged copy as missing
                fd = None
            if fd is None:  # missing, a directory or a device: reported as missing (or unsigned)
                continue
            target = staging / name
            try:
                with os.fdopen(fd, "rb") as f:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as out:
                        shutil.copyfileobj(f, out)
            except OSError as exc:
                raise BundleError(f"bundle {src}: refused: {name}: cannot copy ({exc.strerror})") from None

    def install(self, source: str | Path, *, activate: bool = False, allow_fallback: bool = False) -> InstallResult:
        """Copy, verify and publish the bundle in ``source``; with ``activate`` also switch to it."""
        src = Path(source)
        try:
            is_dir = src.is_dir()
            why = "not a directory" if src.exists() else "does not exist"
        except OSError as exc:  # a name component over 255 bytes, a loop of links ...
            raise BundleError(f"bundle {src}: refused: {exc.strerror or exc}") from None
        if not is_dir:
            raise BundleError(f"bundle {src}: refused: {why}")
        with self._locked(create=True):
            try:
                staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
            except OSError as exc:
                raise BundleError(f"engine root {self.root}: cannot write ({exc.strerror})") from None
            try:
                self._stage(src, staging)
                check = self.inspect(staging, allow_fallback=allow_fallback)
                if check.problems:
                    raise BundleError(f"bundle {src}: refused: {'; '.join(check.problems)}")
                tested: list[str] = []
                if self._selftest is not None and check.manifest is not None:
                    problems, tested = selftest_problems(staging, check.manifest, check.usable, self.device,
                                                         self._selftest, allow_fallback=allow_fallback)
                    if problems:
                        raise BundleError(f"bundle {src}: refused: {'; '.join(problems)}")
                bid = check.bundle_id
                dest = self.bundles_dir / bid
                loaded: str | None = None
                if activate and bid != self.active_id():  # refused before anything is published
                    loaded = self._test_load(staging, bid, "refused")
                already = repaired = False
                if dest.is_dir():
                    if self.inspect_installed(bid).ok:
                        already = True
                    else:  # damaged on disk: swap in the verified copy
                        _seal(staging)
                        trash = self.root / f"{TRASH_PREFIX}{bid}-{os.getpid()}"
                        os.rename(dest, trash)
                        os.rename(staging, dest)
                        _remove_tree(trash)
                        repaired = True
                else:
                    _seal(staging)
                    os.rename(staging, dest)
                fsync_dir(self.bundles_dir)
            except OSError as exc:
                raise BundleError(f"bundle {src}: not installed ({exc.strerror}: {exc.filename})") from None
            finally:
                _remove_tree(staging)
            switch = self._switch_to(bid, loaded=loaded) if activate else None
            return InstallResult(bid, dest, check, already, repaired, switch, [*check.unusable, *tested])

    def activate(self, ref: str) -> Switch:
        """Verify an installed bundle and make it the active one (the old one becomes previous)."""
        with self._locked(create=False):
            bid = self.resolve(ref)
            check = self.inspect_installed(bid)
            if check.problems:
                raise BundleError(f"bundle {bid}: not activated: {'; '.join(check.problems)}")
            return self._switch_to(bid)

    def rollback(self) -> Switch:
        """Verify the previous bundle and swap it with the active one."""
        with self._locked(create=False):
            prev = self.previous_id()
            if prev is None:
                raise BundleError(f"engine root {self.root}: nothing to roll back to (no previous bundle)")
            if prev not in self.ids():
                raise BundleError(f"engine root {self.root}: cannot roll back, previous bundle {prev} is not installed")
            if prev == self.active_id():
                raise BundleError(f"engine root {self.root}: nothing to roll back to (the previous bundle {prev} "
                                  "is the active one)")
            check = self.inspect_installed(prev)
            if check.problems:
                raise BundleError(f"bundle {prev}: not rolled back to: {'; '.join(check.problems)}")
            return self._switch_to(prev, "not rolled back to")

    def remove(self, ref: str, *, force: bool = False) -> str:
        """Delete an installed bundle; never the active one, the previous one only with ``force``."""
        with self._locked(create=False):
            bid = self.resolve(ref)
            if bid == self.active_id():
                raise BundleError(f"bundle {bid}: is the active bundle, not removed (activate another one first)")
            if bid == self.previous_id():
                if not force:
                    raise BundleError(
                        f"bundle {bid}: is the previous bundle, kept for rollback; not removed (--force removes it)"
                    )
                (self.root / PREVIOUS).unlink()
                fsync_dir(self.root)
            trash = self.root / f"{TRASH_PREFIX}{bid}-{os.getpid()}"
            try:
                os.rename(self.bundles_dir / bid, trash)
            except OSError as exc:
                raise BundleError(f"bundle {bid}: not removed ({exc.strerror})") from None
            _remove_tree(trash)
            fsync_dir(self.root)
            return bid
