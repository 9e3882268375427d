"""Engine flashing: install, verify, switch, roll back, remove; refusals leave the store as it was.

Bundles are built by hand (small files whose sha256 the manifest records), and the device is a
DeviceInfo passed to the store: the probe is the only hardware-dependent piece.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from edgeseg import cli
from edgeseg.bundle.device import DeviceInfo
from edgeseg.bundle.manifest import BuilderRecord, EngineRecord, Manifest, ModelRecord
from edgeseg.config.engines import EnginesConfig
from edgeseg.errors import BundleError
from edgeseg.flash.daemon import reload_daemon
from edgeseg.flash.signature import SIGNATURE_NAME, generate_keypair, sign_bundle
from edgeseg.flash.store import EngineStore

ORT = BuilderRecord(runtime="onnxruntime", version="1.31.1")
TRT_ORIN = BuilderRecord(runtime="tensorrt", version="10.3.0.30", gpu="Orin", compute_capability=(8, 7))
TRT_XAVIER = BuilderRecord(runtime="tensorrt", version="10.3.0.30", gpu="Xavier", compute_capability=(7, 2))
TRT_OLD = BuilderRecord(runtime="tensorrt", version="8.6.1.6", gpu="Orin", compute_capability=(8, 7))
CPU = DeviceInfo(onnxruntime="1.31.1")
ORIN = DeviceInfo(tensorrt="10.3.0.30", onnxruntime="1.18.0", gpu="Orin", compute_capability=(8, 7))


# -- helpers ---------------------------------------------------------------------------------


def make_bundle(
    parent: Path,
    name: str = "det",
    engines: tuple[tuple[str, BuilderRecord], ...] = (("det-320.onnx", ORT),),
    extra: tuple[str, ...] = ("det-qdq.onnx",),
    seed: str = "v1",
    edit: Callable[[dict[str, Any]], None] | None = None,
    folder: str | None = None,
) -> Path:
    """A valid bundle directory (content depends on ``seed``); ``edit`` may change the manifest."""
    d = parent / (folder or f"{name}-{seed}")
    d.mkdir(parents=True)
    records = []
    for i, (file, builder) in enumerate(engines):
        data = hashlib.sha256(f"{seed}:{file}:{i}".encode()).digest() * 3  # 96 bytes
        (d / file).write_bytes(data)
        records.append(EngineRecord(
            file=file, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), resolution=(320, 320),
            precision="fp16" if builder.runtime == "tensorrt" else "fp32", builder=builder,
        ))
    extra_files = {}
    for file in extra:
        data = f"{seed}:{file}:extra".encode()
        (d / file).write_bytes(data)
        extra_files[file] = hashlib.sha256(data).hexdigest()
    (d / "report.md").write_text("not listed in the manifest, so never installed\n")
    manifest = Manifest(
        name=name, created=seed, model=ModelRecord(family="yolov8-seg", class_names=["person", "car"], num_masks=32),
        engines=records, extra_files=extra_files,
    )
    doc = manifest.model_dump(mode="json")
    if edit is not None:
        edit(doc)
    (d / "manifest.json").write_text(json.dumps(doc, indent=2))
    return d


def snapshot(root: Path) -> list[tuple[str, str]]:
    """Everything under ``root``: each path with its link target, 'dir', or its content's sha256."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out.append((rel, "-> " + os.readlink(p)))
        elif p.is_dir():
            out.append((rel, "dir"))
        else:
            out.append((rel, hashlib.sha256(p.read_bytes()).hexdigest()))
    return out


def link(root: Path, name: str) -> str | None:
    p = root / name
    return os.readlink(p) if p.is_symlink() else None


def writable(path: Path) -> Path:
    """Installed files are read-only; tests that tamper with them make them writable first."""
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(private, public) of the trusted key, and a private key of another signer."""
    good = tmp_path_factory.mktemp("keys")
    private, public = generate_keypair(good)
    other_private, _ = generate_keypair(tmp_path_factory.mktemp("other"))
    return private, public, other_private


def store_for(tmp_path: Path, device: DeviceInfo = CPU, public_key: Path | None = None) -> EngineStore:
    """A store whose test load is skipped: these bundles are hashes of random bytes, not models
    (tests/test_hardening_flash.py loads the real demo bundle)."""
    return EngineStore(tmp_path / "root", public_key, probe=lambda: device, loader=None)


@pytest.fixture(autouse=True)
def _fake_bundles_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line test-loads through ``load_as_the_daemon``: these random-byte bundles
    would never load, so here a load is taken to succeed."""
    import edgeseg.flash.store as store_module

    monkeypatch.setattr(store_module, "load_as_the_daemon", lambda path, **_: "fake engine")


@pytest.fixture()
def running(tmp_path: Path) -> tuple[EngineStore, str]:
    """A store with one bundle installed and active."""
    store = store_for(tmp_path)
    result = store.install(make_bundle(tmp_path / "src", seed="base"), activate=True)
    return store, result.bundle_id


# -- happy path ------------------------------------------------------------------------------


def test_install_activate_rollback(tmp_path: Path) -> None:
    store = store_for(tmp_path)
    root = store.root
    a = store.install(make_bundle(tmp_path / "src", seed="a"), activate=True)
    assert a.bundle_id.startswith("det@") and len(a.bundle_id) == len("det@") + 12
    assert link(root, "active") == f"bundles/{a.bundle_id}" and link(root, "previous") is None
    installed = sorted(p.name for p in (root / "bundles" / a.bundle_id).iterdir())
    assert installed == ["det-320.onnx", "det-qdq.onnx", "manifest.json"]  # report.md is not listed: not copied
    assert (root / "bundles" / a.bundle_id / "det-320.onnx").stat().st_mode & 0o777 == 0o444
    assert (root / "bundles" / a.bundle_id).stat().st_mode & 0o777 == 0o755  # readable by the daemon's user

    b = store.install(make_bundle(tmp_path / "src", seed="b"))
    assert b.switch is None and link(root, "active") == f"bundles/{a.bundle_id}"

    switch = store.activate(b.bundle_id)
    assert (switch.active, switch.was_active, switch.changed) == (b.bundle_id, a.bundle_id, True)
    assert link(root, "active") == f"bundles/{b.bundle_id}" and link(root, "previous") == f"bundles/{a.bundle_id}"

    store.rollback()
    assert link(root, "active") == f"bundles/{a.bundle_id}" and link(root, "previous") == f"bundles/{b.bundle_id}"
    store.rollback()
    assert link(root, "active") == f"bundles/{b.bundle_id}" and link(root, "previous") == f"bundles/{a.bundle_id}"
    assert store.activate("active").changed is False
    # the runtime reads the active bundle through the link
    assert json.loads((root / "active" / "manifest.json").read_text())["created"] == "b"
    assert not [p for p in root.iterdir() if p.name.startswith((".staging-", ".trash-", ".link-"))]


def test_reinstall_is_a_no_op_and_repairs_a_damaged_copy(running: tuple[EngineStore, str], tmp_path: Path) -> None:
    store, base = running
    before = snapshot(store.root)
    again = store.install(make_bundle(tmp_path / "again", seed="base"))
    assert again.already_installed and again.bundle_id == base and snapshot(store.root) == before

    writable(store.root / "bundles" / base / "det-320.onnx").write_bytes(b"x" * 10)
    assert not store.inspect_installed(base).ok
    repaired = store.install(make_bundle(tmp_path / "again2", seed="base"))
    assert repaired.repaired and store.inspect_installed(base).ok
    assert link(store.root, "active") == f"bundles/{base}"


def test_mixed_bundle_installs_where_only_onnxruntime_runs(tmp_path: Path) -> None:
    store = store_for(tmp_path, CPU)
    src = make_bundle(tmp_path / "src", engines=(("det-320.onnx", ORT), ("det-640.engine", TRT_ORIN)))
    result = store.install(src)
    assert [e.file for e in result.inspection.usable] == ["det-320.onnx"]
    assert result.notes == ["det-640.engine: TensorRT is not installed on this device"]


def test_allow_fallback_installs_a_bundle_whose_tensorrt_engines_do_not_fit(tmp_path: Path) -> None:
    store = store_for(tmp_path, ORIN)
    src = make_bundle(tmp_path / "src", engines=(("det-320.onnx", ORT), ("det-640.engine", TRT_XAVIER)))
    with pytest.raises(BundleError, match="none of its TensorRT engines fits"):
        store.install(src)
    assert store.install(src, allow_fallback=True).notes[0].startswith("det-640.engine: built for Xavier")


def test_stale_staging_from_a_crash_is_removed(running: tuple[EngineStore, str], tmp_path: Path) -> None:
    store, _ = running
    stale = store.root / ".staging-crashed"
    stale.mkdir()
    (stale / "half.onnx").write_bytes(b"half")
    store.install(make_bundle(tmp_path / "src2", seed="next"))
    assert not stale.exists()


# -- refusals: nothing half-installed, active untouched ---------------------------------------


def _rewrite(path: Path, change: Callable[[bytes], bytes]) -> None:
    path.write_bytes(change(path.read_bytes()))


def _escaping(parent: Path) -> Path:
    parent.mkdir(parents=True)
    outside = parent / "outside.onnx"
    outside.write_bytes(b"secret")
    sha = hashlib.sha256(b"secret").hexdigest()
    return make_bundle(parent, extra=(), edit=lambda d: d["extra_files"].update({"../outside.onnx": sha}))


def _absolute(parent: Path) -> Path:
    parent.mkdir(parents=True)
    outside = parent / "abs.onnx"
    outside.write_bytes(b"secret")
    sha = hashlib.sha256(b"secret").hexdigest()
    return make_bundle(parent, extra=(), edit=lambda d: d["extra_files"].update({str(outside): sha}))


def _damaged(change: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(parent: Path) -> Path:
        d = make_bundle(parent)
        change(d)
        return d
    return build


REFUSALS: list[tuple[str, Callable[[Path], Path], DeviceInfo, str]] = [
    ("not-json", _damaged(lambda d: (d / "manifest.json").write_text('{"name": "det", ')), CPU,
     "manifest.json: not valid JSON"),
    ("not-utf8", _damaged(lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe{}")), CPU, "not UTF-8"),
    ("no-manifest", _damaged(lambda d: (d / "manifest.json").unlink()), CPU, "not an engine bundle (no manifest.json)"),
    ("unknown-key", lambda p: make_bundle(p, edit=lambda d: d.update(colour="red")), CPU,
     "field 'colour': unknown key"),
    ("missing-file", _damaged(lambda d: (d / "det-320.onnx").unlink()), CPU, "det-320.onnx: missing"),
    ("missing-extra", _damaged(lambda d: (d / "det-qdq.onnx").unlink()), CPU, "det-qdq.onnx: missing"),
    ("truncated", _damaged(lambda d: _rewrite(d / "det-320.onnx", lambda b: b[: len(b) // 2])), CPU,
     "det-320.onnx: 48 bytes, manifest says 96 (truncated"),
    ("tampered", _damaged(lambda d: _rewrite(d / "det-320.onnx", lambda b: b[:-1] + b"!")), CPU,
     "det-320.onnx: sha256"),
    ("tampered-extra", _damaged(lambda d: _rewrite(d / "det-qdq.onnx", lambda b: b.upper())), CPU,
     "det-qdq.onnx: sha256"),
    ("a-directory", _damaged(lambda d: ((d / "det-320.onnx").unlink(), (d / "det-320.onnx").mkdir())), CPU,
     "det-320.onnx: missing"),
    ("escaping", _escaping, CPU, "../outside.onnx: file names must stay inside the bundle"),
    ("absolute", _absolute, CPU, "file names must stay inside the bundle"),
    ("reserved", lambda p: make_bundle(p, extra=(SIGNATURE_NAME,)), CPU, "manifest.json.sig: reserved name"),
    ("bad-name", lambda p: make_bundle(p, edit=lambda d: d.update(name="../evil")), CPU, "bundle name '../evil'"),
    ("other-gpu", lambda p: make_bundle(p, engines=(("det.engine", TRT_XAVIER),)), ORIN,
     "det.engine: built for Xavier (sm 72), this device has Orin (sm 87)"),
    ("other-tensorrt", lambda p: make_bundle(p, engines=(("det.engine", TRT_OLD),)), ORIN,
     "det.engine: built with TensorRT 8.6.1.6, this device has 10.3.0.30"),
    ("tensorrt-on-cpu", lambda p: make_bundle(p, engines=(("det.engine", TRT_ORIN),)), CPU,
     "no engine can run on this device"),
    ("trt-does-not-fit", lambda p: make_bundle(p, engines=(("a.onnx", ORT), ("b.engine", TRT_OLD))), ORIN,
     "none of its TensorRT engines fits this device (b.engine: built with TensorRT 8.6.1.6"),
]


@pytest.mark.parametrize("build, device, expected", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_install_refusals_leave_the_store_as_it_was(
    tmp_path: Path, build: Callable[[Path], Path], device: DeviceInfo, expected: str
) -> None:
    store = store_for(tmp_path, device)
    base = store.install(make_bundle(tmp_path / "src", seed="base"), activate=True).bundle_id
    before = snapshot(store.root)
    src = build(tmp_path / "bad")
    with pytest.raises(BundleError) as info:
        store.install(src, activate=True)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and message.startswith(f"bundle {src}: refused: ")
    assert snapshot(store.root) == before
    assert link(store.root, "active") == f"bundles/{base}"


def test_install_refuses_a_source_that_is_not_a_directory(running: tuple[EngineStore, str], tmp_path: Path) -> None:
    store, _ = running
    before = snapshot(store.root)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="not a directory"):
        store.install(tmp_path / "file")
    assert snapshot(store.root) == before


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), OSError(28, "No space left on device")],
                         ids=["ctrl-c", "disk-full"])
def test_interrupted_copy_leaves_nothing(
    running: tuple[EngineStore, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: BaseException
) -> None:
    store, base = running
    before = snapshot(store.root)
    import edgeseg.flash.store as store_module

    real_copy = store_module.shutil.copyfileobj
    calls: list[str] = []

    def copy_then_fail(src: Any, dst: Any) -> Any:
        calls.append(str(dst.name))
        if len(calls) == 2:
            raise interrupt
        return real_copy(src, dst)

    monkeypatch.setattr(store_module.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(type(interrupt) if isinstance(interrupt, KeyboardInterrupt) else BundleError) as info:
        store.install(make_bundle(tmp_path / "src2", seed="next"), activate=True)
    if isinstance(info.value, BundleError):
        assert "cannot copy (No space left on device)" in str(info.value)
    assert len(calls) == 2
    assert snapshot(store.root) == before and link(store.root, "active") == f"bundles/{base}"


# -- signatures ------------------------------------------------------------------------------


def _signed(private: Path, then: Callable[[Path], None] | None = None) -> Callable[[Path], Path]:
    def build(parent: Path) -> Path:
        d = make_bundle(parent)
        sign_bundle(d, private)
        if then is not None:
            then(d)
        return d
    return build


def _edit_created(d: Path) -> None:
    doc = json.loads((d / "manifest.json").read_text())
    doc["created"] = "edited after signing"
    (d / "manifest.json").write_text(json.dumps(doc))


SIGNATURE_REFUSALS: list[tuple[str, str, str]] = [
    ("unsigned", "none", "manifest.json.sig: missing; the bundle is unsigned and a public key"),
    ("other-key", "other", "manifest.json.sig: does not verify with public key"),
    ("modified-after-signing", "edited", "the manifest was changed after signing"),
    ("garbage", "garbage", "manifest.json.sig: not an ed25519 signature"),
]


@pytest.mark.parametrize("case, expected", [r[1:] for r in SIGNATURE_REFUSALS], ids=[r[0] for r in SIGNATURE_REFUSALS])
def test_signature_refusals(tmp_path: Path, keys: tuple[Path, Path, Path], case: str, expected: str) -> None:
    private, public, other = keys
    store = store_for(tmp_path, CPU, public)
    base = store.install(_signed(private)(tmp_path / "src"), activate=True)
    assert base.inspection.signature_checked
    before = snapshot(store.root)
    build = {
        "none": lambda p: make_bundle(p, seed="new"),
        "other": _signed(other),
        "edited": _signed(private, _edit_created),
        "garbage": _signed(private, lambda d: (d / SIGNATURE_NAME).write_text("not base64 at all!\n")),
    }[case]
    with pytest.raises(BundleError, match=expected.replace(".", r"\.")):
        store.install(build(tmp_path / "bad"), activate=True)
    assert snapshot(store.root) == before


def test_signed_bundle_installs_and_keeps_its_signature(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    private, public, _ = keys
    store = store_for(tmp_path, CPU, public)
    result = store.install(_signed(private)(tmp_path / "src"))
    assert (result.path / SIGNATURE_NAME).is_file() and store.inspect_installed(result.bundle_id).ok
    # a signed bundle installs where no key is configured too (the signature is then not checked)
    assert store_for(tmp_path / "b", CPU).install(_signed(private)(tmp_path / "src2")).inspection.signed


def test_unusable_public_key_refuses_everything(tmp_path: Path) -> None:
    store = store_for(tmp_path, CPU, tmp_path / "absent.pem")
    with pytest.raises(BundleError, match=r"public key .*absent\.pem: not found"):
        store.install(make_bundle(tmp_path / "src"))
    (tmp_path / "garbage.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(BundleError, match="not a PEM public key"):
        store_for(tmp_path, CPU, tmp_path / "garbage.pem").install(make_bundle(tmp_path / "src2"))
    assert not list((tmp_path / "root" / "bundles").iterdir())


def test_sign_refuses_a_bundle_whose_files_do_not_match(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    d = make_bundle(tmp_path)
    (d / "det-320.onnx").write_bytes(b"other")
    with pytest.raises(BundleError, match="not signed, its files do not match the manifest: det-320.onnx"):
        sign_bundle(d, keys[0])
    assert not (d / SIGNATURE_NAME).exists()


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600
    with pytest.raises(BundleError, match="already exists"):
        generate_keypair(tmp_path)


# -- activate, rollback, remove on installed bundles ------------------------------------------


def _tamper_file(d: Path) -> None:
    writable(d / "det-320.onnx").write_bytes(b"y" * 96)


def _add_file(d: Path) -> None:
    (d / "payload.so").write_bytes(b"\x7fELF")


def _rewrite_manifest(d: Path) -> None:
    writable(d / "manifest.json")
    _edit_created(d)


INSTALLED_TAMPERING = [
    ("tampered", _tamper_file, "det-320.onnx: sha256"),
    ("added-file", _add_file, "payload.so: not in the manifest"),
    ("manifest-rewritten", _rewrite_manifest, "manifest.json: does not match the bundle's id"),
    ("deleted-file", lambda d: (d / "det-qdq.onnx").unlink(), "det-qdq.onnx: missing"),
]


@pytest.mark.parametrize(
    "tamper, expected", [r[1:] for r in INSTALLED_TAMPERING], ids=[r[0] for r in INSTALLED_TAMPERING]
)
def test_activate_and_rollback_reverify(
    running: tuple[EngineStore, str], tmp_path: Path, tamper: Callable[[Path], None], expected: str
) -> None:
    store, base = running
    other = store.install(make_bundle(tmp_path / "src2", seed="other")).bundle_id
    tamper(store.root / "bundles" / other)
    before = snapshot(store.root)
    with pytest.raises(BundleError, match=f"bundle {other}: not activated: .*{expected}"):
        store.activate(other)
    assert snapshot(store.root) == before

    # the same damage on the rollback target refuses the rollback
    store.activate(base)  # no-op, base is active
    store2 = store_for(tmp_path / "two")
    a = store2.install(make_bundle(tmp_path / "s3", seed="a"), activate=True).bundle_id
    b = store2.install(make_bundle(tmp_path / "s4", seed="b"), activate=True).bundle_id
    tamper(store2.root / "bundles" / a)
    before = snapshot(store2.root)
    with pytest.raises(BundleError, match=f"bundle {a}: not rolled back to: .*{expected}"):
        store2.rollback()
    assert snapshot(store2.root) == before and link(store2.root, "active") == f"bundles/{b}"


def test_rollback_without_previous(running: tuple[EngineStore, str]) -> None:
    store, _ = running
    with pytest.raises(BundleError, match="nothing to roll back to"):
        store.rollback()


def test_remove(tmp_path: Path) -> None:
    store = store_for(tmp_path)
    a = store.install(make_bundle(tmp_path / "s", seed="a"), activate=True).bundle_id
    b = store.install(make_bundle(tmp_path / "s", seed="b"), activate=True).bundle_id
    c = store.install(make_bundle(tmp_path / "s", name="seg", seed="c")).bundle_id
    before = snapshot(store.root)
    with pytest.raises(BundleError, match=f"bundle {b}: is the active bundle, not removed"):
        store.remove(b)
    with pytest.raises(BundleError, match=f"bundle {a}: is the previous bundle, kept for rollback"):
        store.remove(a)
    with pytest.raises(BundleError, match="'det': ambiguous"):
        store.remove("det")
    with pytest.raises(BundleError, match=r"'nope': not installed in .* \(installed: "):
        store.remove("nope")
    assert snapshot(store.root) == before

    assert store.remove("seg") == c  # by name
    assert store.remove("previous", force=True) == a
    assert link(store.root, "previous") is None and store.ids() == [b]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".trash-")]


def test_operations_on_a_missing_root_say_so(tmp_path: Path) -> None:
    store = store_for(tmp_path)
    for op in (lambda: store.activate("x"), store.rollback, lambda: store.remove("x")):
        with pytest.raises(BundleError, match="does not exist"):
            op()
    assert not store.root.exists()


# -- the daemon ------------------------------------------------------------------------------

DAEMON = """
import fcntl, json, os, signal, sys, time
pid_file, log, mode = sys.argv[2], sys.argv[3], sys.argv[4]
reloads = 0
def verdict(ok, message):
    tmp = pid_file + ".reload.json.tmp"
    open(tmp, "w").write(json.dumps({"pid": os.getpid(), "reloads": reloads, "ok": ok, "message": message}))
    os.replace(tmp, pid_file + ".reload.json")
def on_hup(*_):
    global reloads
    reloads += 1
    open(log, "a").write("reload\\n")
    if mode == "fail":  # the second reload fails after its model loaded (the camera gone, say)
        verdict(reloads != 2, "reload failed: camera gone" if reloads == 2 else "reloaded: model det")
    elif mode != "quiet":
        verdict(mode == "accept", "reloaded: model det" if mode == "accept" else "reload refused: not a model")
signal.signal(signal.SIGHUP, on_hup)
fd = os.open(pid_file, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)  # as edgeseg serve does: held while it runs
os.write(fd, str(os.getpid()).encode())
if mode != "quiet":
    verdict(True, "started")
end = time.time() + 30
while time.time() < end:
    time.sleep(0.05)
"""


def start_daemon(tmp_path: Path, mode: str = "quiet") -> tuple[Path, Path, subprocess.Popen[bytes]]:
    """A real process run as ``edgeseg serve`` (a script named edgeseg) holding its pid file's
    lock; ``mode``: quiet (writes no verdicts, as an older daemon), accept or refuse reloads, or
    fail the second one (after its model loaded, so it restarted through the link)."""
    pid_file, log = tmp_path / "run" / "edgeseg.pid", tmp_path / "hup.log"
    pid_file.parent.mkdir(exist_ok=True)
    script = tmp_path / "bin" / "edgeseg"
    script.parent.mkdir(exist_ok=True)
    script.write_text(DAEMON)
    proc = subprocess.Popen([sys.executable, str(script), "serve", str(pid_file), str(log), mode])
    if not _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() == str(proc.pid)):
        proc.kill()
        raise AssertionError("test daemon did not write its pid file")
    return pid_file, log, proc


def _wait_for(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture()
def daemon(tmp_path: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    """A running ``edgeseg serve`` stand-in that writes no verdicts (see ``start_daemon``)."""
    pid_file, log, proc = start_daemon(tmp_path)
    try:
        yield pid_file, log, proc
    finally:
        proc.kill()
        proc.wait()


def test_activate_sighups_the_running_daemon(
    tmp_path: Path, daemon: tuple[Path, Path, subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file, log, proc = daemon
    root = tmp_path / "root"
    flags = ["--root", str(root), "--pid-file", str(pid_file)]
    assert cli.main(["engines", "install", str(make_bundle(tmp_path / "s", seed="a")), *flags]) == 0
    time.sleep(0.1)
    assert not log.exists()  # installing without --activate switches nothing, signals nothing
    assert cli.main(["engines", "activate", "det", *flags]) == 0
    assert f"daemon (pid {proc.pid}) signalled to reload (SIGHUP)" in capsys.readouterr().out
    assert _wait_for(lambda: log.exists() and log.read_text().count("reload") == 1)
    assert cli.main(["engines", "install", str(make_bundle(tmp_path / "s", seed="b")), "--activate", *flags]) == 0
    assert _wait_for(lambda: log.read_text().count("reload") == 2)
    assert cli.main(["engines", "rollback", *flags]) == 0
    assert _wait_for(lambda: log.read_text().count("reload") == 3)
    assert cli.main(["engines", "activate", "active", *flags]) == 0  # already active: no reload
    assert "already active" in capsys.readouterr().out
    time.sleep(0.1)
    assert log.read_text().count("reload") == 3
    assert proc.poll() is None  # handled, not killed


def test_no_daemon_is_a_message_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--root", str(tmp_path / "root"), "--pid-file", str(tmp_path / "absent.pid")]
    assert cli.main(["engines", "install", str(make_bundle(tmp_path)), "--activate", *flags]) == 0
    out = capsys.readouterr()
    assert "no daemon running (no pid file" in out.out and out.err == ""


def test_daemon_notices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "edgeseg.pid"
    pid_file.write_text("garbage\n")
    notice = reload_daemon(pid_file)
    assert not notice.signalled and notice.applied and "does not hold a process id" in notice.message

    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    pid_file.write_text(f"{exited.pid}\n")
    notice = reload_daemon(pid_file)
    assert not notice.signalled and notice.applied and "no edgeseg serve holds it" in notice.message

    stranger = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(str(stranger.pid))
        notice = reload_daemon(pid_file)
        assert not notice.signalled and "no edgeseg serve holds it" in notice.message
        time.sleep(0.1)
        assert stranger.poll() is None  # SIGHUP would have ended it
    finally:
        stranger.kill()
        stranger.wait()

    import edgeseg.flash.daemon as daemon_module

    def denied(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    pid_file.write_text(str(os.getpid()))
    monkeypatch.setattr(daemon_module, "_argv", lambda pid: ["/usr/bin/edgeseg", "serve", "--config", "x"])
    monkeypatch.setattr(daemon_module, "_locked_by_someone", lambda path: True)
    monkeypatch.setattr(daemon_module.os, "kill", denied)
    notice = reload_daemon(pid_file)
    assert not notice.applied and "permission denied" in notice.message and "kill -HUP" in notice.message
    monkeypatch.setattr(daemon_module.os, "kill", lambda pid, sig: None)
    assert reload_daemon(pid_file, signal.SIGHUP).signalled


# -- the command line ------------------------------------------------------------------------


def test_cli_refusal_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--root", str(tmp_path / "root"), "--pid-file", str(tmp_path / "none.pid")]
    bad = make_bundle(tmp_path)
    (bad / "det-320.onnx").write_bytes(b"short")
    assert cli.main(["engines", "install", str(bad), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"edgeseg: bundle {bad}: refused: det-320.onnx: 5 bytes")


def test_cli_keygen_sign_install_list_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keydir = tmp_path / "keys"
    assert cli.main(["engines", "keygen", "--out", str(keydir)]) == 0
    private, public = keydir / "edgeseg-signing.key.pem", keydir / "edgeseg-signing.pub.pem"
    src = make_bundle(tmp_path / "s", engines=(("det-320.onnx", ORT), ("det-640.engine", TRT_ORIN)))
    assert cli.main(["engines", "sign", "--key", str(private), str(src)]) == 0
    flags = ["--root", str(tmp_path / "root"), "--pid-file", str(tmp_path / "none.pid"), "--public-key", str(public)]
    capsys.readouterr()
    assert cli.main(["engines", "install", str(src), "--activate", *flags]) == 0
    out = capsys.readouterr().out
    assert "installed det@" in out and "signature verified" in out
    assert "not usable here: det-640.engine" in out or "1 of 2 engines run here" in out

    assert cli.main(["engines", "list", *flags]) == 0
    out = capsys.readouterr().out
    assert "  active    det@" in out and "onnxruntime fp32 320x320" in out
    assert "tensorrt fp16 320x320 (TensorRT 10.3.0.30, Orin sm87)" in out

    assert cli.main(["engines", "verify", *flags]) == 0
    assert "ok    det@" in capsys.readouterr().out
    assert cli.main(["engines", "verify", str(src), *flags]) == 0  # a directory (holds a '/')

    bid = next((tmp_path / "root" / "bundles").iterdir())
    writable(bid / "det-qdq.onnx").write_bytes(b"changed")
    (bid / "extra.bin").write_bytes(b"dropped in")
    assert cli.main(["engines", "verify", *flags]) == 1
    out = capsys.readouterr().out
    assert "FAIL  det@" in out and "det-qdq.onnx: 7 bytes" not in out  # extra files have no size: hashed
    assert "det-qdq.onnx: sha256" in out and "extra.bin: not in the manifest" in out


def test_cli_remove_active_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--root", str(tmp_path / "root"), "--pid-file", str(tmp_path / "none.pid")]
    assert cli.main(["engines", "install", str(make_bundle(tmp_path)), "--activate", *flags]) == 0
    capsys.readouterr()
    assert cli.main(["engines", "remove", "det", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the active bundle, not removed" in err


@pytest.mark.parametrize(
    "doc, expected, raises",
    [
        ({}, ("/var/lib/edgeseg/engines", None, "/run/edgeseg/edgeseg.pid"), None),
        ({"root": "/data/engines", "public_key": "/etc/edgeseg/key.pub.pem"},
         ("/data/engines", "/etc/edgeseg/key.pub.pem", "/run/edgeseg/edgeseg.pid"), None),
        ({"root": "engines"}, None, "must be an absolute path"),
        ({"pid_file": ""}, None, "at least 1 character"),
        ({"signed": True}, None, "Extra inputs are not permitted"),
    ],
)
def test_engines_config(doc: dict[str, Any], expected: tuple[Any, ...] | None, raises: str | None) -> None:
    if raises is not None:
        with pytest.raises(ValueError, match=raises):
            EnginesConfig.model_validate(doc)
        return
    cfg = EnginesConfig.model_validate(doc)
    assert (cfg.root, cfg.public_key, cfg.pid_file) == expected
