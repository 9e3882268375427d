"""``edgeseg engines``: list, verify, install, activate, rollback, remove, sign, keygen, build.

``add_engines_parser(subparsers)`` registers the command on the ``edgeseg`` parser; each action
sets ``func`` (args -> exit code) as the other commands do, and refusals are BundleErrors that
``edgeseg.cli.main`` prints as one line. ``main(argv)`` runs the command on its own.

Exit codes: 0 done (also when no daemon runs: the switch takes effect at its next start);
1 ``verify`` found problems, ``build`` could not build or self-test a plan, or a daemon runs that
could not be signalled (the switch is made but the daemon still runs the old bundle); 2 refused
(BundleError/ConfigError, one line).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Optional

from edgeseg.config.engines import EnginesConfig
from edgeseg.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from edgeseg.bundle.device import DeviceInfo
    from edgeseg.flash.daemon import DaemonNotice
    from edgeseg.flash.store import BundleLoader, EngineStore, Inspection, Switch

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_NOT_APPLIED: Final = 1


# -- configuration ---------------------------------------------------------------------------


def engines_config(args: argparse.Namespace) -> EnginesConfig:
    """The ``engines`` section of ``--config`` (defaults without one), with the flags laid over it."""
    from pydantic import ValidationError

    doc: dict[str, Any] = {}
    from edgeseg.config import DEFAULT_SERVICE_CONFIG, load_config

    if not getattr(args, "config", None) and os.path.isfile(DEFAULT_SERVICE_CONFIG):
        args.config = DEFAULT_SERVICE_CONFIG
    if getattr(args, "config", None):
        doc = load_config(args.config).engines.model_dump()
    for key in ("root", "public_key", "pid_file"):
        value = getattr(args, key, None)
        if value is not None:
            doc[key] = os.path.abspath(value)
    try:
        return EnginesConfig.model_validate(doc)
    except ValidationError as exc:
        details = "; ".join(f"engines.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{args.config or 'command line'}: {details}") from None


def _store(args: argparse.Namespace) -> tuple[EngineStore, EnginesConfig]:
    from edgeseg.flash.store import EngineStore

    cfg = engines_config(args)
    return EngineStore(cfg.root, cfg.public_key, loader=_loader(args)), cfg


def _loader(args: argparse.Namespace) -> BundleLoader:
    """Test-loads a bundle with the daemon's own model options (its config's ``model`` section),
    so a bundle is refused before the switch exactly when the daemon's reload would refuse it."""
    from functools import partial

    from edgeseg.flash.store import load_as_the_daemon

    if not getattr(args, "config", None):
        return load_as_the_daemon
    from edgeseg.app import load_options
    from edgeseg.config import load_config

    config = load_config(args.config)
    return partial(load_as_the_daemon, options=load_options(config), imgsz=config.model.imgsz)


# -- output ----------------------------------------------------------------------------------


def _signature_word(check: Inspection) -> str:
    if check.signature_checked:
        return "signature verified"
    return "signed (not checked: no public key configured)" if check.signed else "unsigned"


def _device_plans(path: Path) -> int:
    """How many plans this device built into the bundle (0 when none or unreadable)."""
    from edgeseg.bundle.local import read_device_manifest

    try:
        overlay = read_device_manifest(path)
    except BundleError:
        return 0
    return len(overlay.plans) if overlay is not None else 0


def _summary(check: Inspection) -> str:
    m = check.manifest
    if m is None:
        return "no manifest"
    files = len(m.engines) + len(m.extra_files)
    plural = "s" if files != 1 else ""
    runs = f"{len(check.usable)} of {len(m.engines)} engines run here"
    plans = _device_plans(check.path)
    built = f", {plans} plan{'s' if plans != 1 else ''} built on this device" if plans else ""
    return f"{files} file{plural} verified, {runs}{built}, {_signature_word(check)}"


def _switched(switch: Switch, notice: DaemonNotice | None) -> int:
    if not switch.changed:
        print(f"engines: {switch.active} is already active; nothing switched")
        return EXIT_OK
    loaded = f", test-loaded: {switch.loaded}" if switch.loaded else ""
    print(f"engines: active {switch.active} (previous: {switch.was_active or 'none'}{loaded})")
    if notice is None:
        return EXIT_OK
    print(f"engines: {notice.message}", file=sys.stdout if notice.applied else sys.stderr)
    return EXIT_OK if notice.applied else EXIT_NOT_APPLIED


def _switch_and_reload(store: EngineStore, cfg: EnginesConfig, switch: Switch) -> int:
    """Report ``switch``, SIGHUP the daemon and wait (bounded) for its verdict; when it refuses
    the bundle, put ``active``/``previous`` back so that its next start does not fail on it."""
    from edgeseg.flash.daemon import VERDICT_WAIT_S, await_verdict

    if not switch.changed:
        return _switched(switch, None)
    notice = _reload(cfg)
    code = _switched(switch, notice)
    if code != EXIT_OK or not notice.signalled or notice.verdicts_before is None:
        return code  # no daemon, or one that writes no verdicts: the test load stands for it
    verdict = await_verdict(cfg.pid_file, notice)
    if verdict is None:
        print(f"engines: daemon (pid {notice.pid}) gave no verdict within {VERDICT_WAIT_S:.0f} s "
              "(still loading, or exited); see its log", file=sys.stderr)
        return EXIT_NOT_APPLIED
    if verdict.ok:
        print(f"engines: daemon (pid {notice.pid}) {verdict.message}")
        return EXIT_OK
    undone = store.undo(switch)
    back = "switched back to " + (switch.was_active or "no active bundle") if undone else (
        "left as it is (switched again meanwhile)")
    if undone and verdict.message.startswith("reload failed"):
        # A refused reload keeps the daemon's running bundle; a failed one restarted its previous
        # configuration through the `active` link while it still named the new bundle: one more
        # SIGHUP brings it onto the bundle the link names again.
        back += f"; daemon reloaded onto it ({_reload(cfg).message})"
    raise BundleError(f"bundle {switch.active}: the daemon (pid {notice.pid}) refused it ({verdict.message}); "
                      f"active {back}")


def _reload(cfg: EnginesConfig) -> DaemonNotice:
    from edgeseg.flash.daemon import reload_daemon

    return reload_daemon(cfg.pid_file)


# -- actions ---------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from edgeseg.bundle.verify import incompatibility
    from edgeseg.flash.store import describe_engine

    store, _ = _store(args)
    store.repair()  # an interrupted switch, where this user may repair it (else listed as a problem)
    bundles = store.installed()
    if not bundles:
        print(f"engines: no bundles installed in {store.root}")
        return EXIT_OK
    device = store.device
    print(f"engines in {store.root} (this device: {device.describe()})")
    for b in bundles:
        mark = "active" if b.active else "previous" if b.previous else ""
        if b.manifest is None:
            print(f"  {mark:<9} {b.id}  DAMAGED: {b.error}")
            continue
        m = b.manifest
        created = f", created {m.created}" if m.created else ""
        print(f"  {mark:<9} {b.id}  {m.model.family}, {len(m.model.class_names)} classes{created}")
        width = max(len(e.file) for e in m.engines)
        for e in m.engines:
            reason = incompatibility(e, device)
            here = "runs here" if reason is None else f"not here: {reason}"
            print(f"              {e.file:<{width}}  {describe_engine(e)}  {here}")
        _list_device_plans(b.path, device)
    for problem in store.link_problems():
        print(f"  problem: {problem}")
    return EXIT_OK


def _list_device_plans(path: Path, device: DeviceInfo) -> None:
    """The plans ``engines build`` made in an installed bundle, as the signed engines are listed."""
    from edgeseg.bundle.local import read_device_manifest
    from edgeseg.bundle.verify import incompatibility
    from edgeseg.flash.store import describe_engine

    try:
        overlay = read_device_manifest(path)
    except BundleError as exc:
        print(f"              DAMAGED: {exc}")
        return
    for p in overlay.plans if overlay is not None else []:
        reason = incompatibility(p.engine, device)
        here = "runs here" if reason is None else f"not here: {reason}"
        print(f"              {p.engine.file}  {describe_engine(p.engine)}  built here {p.built or ''}  {here}")


def cmd_verify(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    store.repair()
    checks: list[tuple[str, Inspection]] = []
    target = args.bundle
    if target is not None and (os.sep in target or target in (".", "..")):  # a directory, not installed
        checks.append((target, store.inspect(target, allow_fallback=args.allow_fallback)))
    elif target is not None:
        bid = store.resolve(target)
        checks.append((bid, store.inspect_installed(bid)))
    else:
        checks = [(bid, store.inspect_installed(bid)) for bid in store.ids()]
        if not checks:
            print(f"engines: no bundles installed in {store.root}")
    bad = 0
    for label, check in checks:
        if check.ok:
            print(f"ok    {label}: {_summary(check)}")
        else:
            bad += 1
            print(f"FAIL  {label}:")
            for problem in check.problems:
                print(f"        {problem}")
    links = store.link_problems() if target is None else []
    for problem in links:
        print(f"FAIL  {problem}")
    if bad or links:
        print(f"engines: {bad + len(links)} of {len(checks) + len(links)} checked failed", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    store, cfg = _store(args)
    result = store.install(args.source, activate=args.activate, allow_fallback=args.allow_fallback)
    verb = "already installed" if result.already_installed else "repaired" if result.repaired else "installed"
    print(f"engines: {verb} {result.bundle_id} from {args.source} ({_summary(result.inspection)})")
    for note in result.notes:
        print(f"engines: not usable here: {note}")
    if result.switch is None:
        return EXIT_OK
    return _switch_and_reload(store, cfg, result.switch)


def cmd_activate(args: argparse.Namespace) -> int:
    store, cfg = _store(args)
    switch = store.activate(args.bundle)
    return _switch_and_reload(store, cfg, switch)


def cmd_rollback(args: argparse.Namespace) -> int:
    store, cfg = _store(args)
    switch = store.rollback()
    return _switch_and_reload(store, cfg, switch)


def cmd_remove(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    print(f"engines: removed {store.remove(args.bundle, force=args.force)}")
    return EXIT_OK


def _device_facts() -> tuple[DeviceInfo, Optional[str]]:
    """This device (TensorRT, GPU identity) and why its JetPack is unknown (None when known)."""
    from edgeseg.bundle.device import probe_device
    from edgeseg.platform.host import Host
    from edgeseg.platform.jetson import read_platform

    return probe_device(), read_platform(Host()).problem()


def _bundle_to_build(args: argparse.Namespace, store: EngineStore, device: DeviceInfo) -> tuple[Path, Optional[str]]:
    """The bundle directory BUNDLE names (a path when it holds a '/', else an installed bundle),
    verified (hashes, signature when a key is configured) before anything is built from it."""
    from edgeseg.flash.store import inspect_bundle

    target: str = args.bundle
    bid: Optional[str] = None
    if os.sep in target or target in (".", ".."):
        path = Path(target).resolve()
        if not path.is_dir():
            raise BundleError(f"bundle {target}: {'not a directory' if path.exists() else 'does not exist'}")
    else:
        bid = store.resolve(target)
        path = store.bundles_dir / bid
    # The signed files and signature; not device/ (rebuilt anyway), nor whether an engine runs
    # here already: the plans about to be built are what will run (ONNX Runtime may be absent).
    runs_anything = dataclasses.replace(device, onnxruntime=device.onnxruntime or "not needed to build")
    check = inspect_bundle(path, runs_anything, store.public_key)
    problems = list(check.problems)
    if bid is not None and check.manifest is not None and check.bundle_id != bid:
        problems.append(f"manifest.json does not match the bundle's id {bid} (modified after install)")
    if problems:
        raise BundleError(f"bundle {target}: not building from it: {'; '.join(problems)}")
    return path, bid


def cmd_build(args: argparse.Namespace) -> int:
    from edgeseg.flash import build

    precisions = build.parse_precisions(args.precision) if args.precision is not None else None
    sizes = build.parse_sizes(args.resolutions) if args.resolutions is not None else None
    if args.workspace < 1:
        raise BundleError(f"--workspace {args.workspace}: expected at least 1 MiB")
    device, platform_problem = _device_facts()
    version = build.preflight(device, platform_problem)
    store, cfg = _store(args)
    path, bid = _bundle_to_build(args, store, device)
    manifest, _ = build.read_signed(path)
    requests, notes = build.plan_requests(manifest, version, precisions, sizes)
    for note in notes:
        print(f"engines build: left out: {note}")
    plural = "s" if len(requests) != 1 else ""
    print(f"engines build: {bid or path}: {len(requests)} plan{plural} on {device.describe()}")
    report = build.build_plans(path, requests, device, workspace_mib=args.workspace, force=args.force,
                               selftest=build.selftest_plan, say=lambda line: print(line, flush=True))
    print(f"engines build: {report.summary()}", file=sys.stdout if report.ok else sys.stderr)
    code = EXIT_OK if report.ok else EXIT_PROBLEMS
    if report.built and bid is not None and bid == store.active_id():
        notice = _reload(cfg)
        print(f"engines: {notice.message}", file=sys.stdout if notice.applied else sys.stderr)
    return code


def cmd_sign(args: argparse.Namespace) -> int:
    from edgeseg.flash.signature import key_fingerprint, load_private_key, sign_bundle

    path = sign_bundle(args.bundle, args.key)
    fingerprint = key_fingerprint(load_private_key(args.key).public_key())
    print(f"engines: signed {args.bundle} ({path.name}, key {fingerprint})")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from edgeseg.flash.signature import generate_keypair

    private, public = generate_keypair(args.out)
    print(
        f"engines: wrote private key {private} (keep it off the devices) and public key {public} "
        "(set engines.public_key to it on the devices)"
    )
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def _store_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="FILE", help="YAML configuration; its engines section applies")
    p.add_argument("--root", metavar="DIR", help="engine store (default /var/lib/edgeseg/engines)")
    p.add_argument("--public-key", metavar="PEM", help="require bundles signed by this ed25519 key")
    p.add_argument("--pid-file", metavar="FILE", help="daemon pid file (default /run/edgeseg/edgeseg.pid)")
    return p


def add_engines_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``engines`` and its actions on the ``edgeseg`` parser's subparsers."""
    common = _store_options()
    eng = subparsers.add_parser("engines", help="install, verify, switch and roll back engine bundles")
    actions = eng.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("list", parents=[common], help="installed bundles, their engines, what runs here")
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("verify", parents=[common],
                           help="check installed bundles (or a bundle directory): hashes, signature, device")
    p.add_argument("bundle", nargs="?", metavar="NAME|PATH",
                   help="an installed bundle, or a directory when it holds a '/' (./b); default: all installed")
    p.add_argument("--allow-fallback", action="store_true",
                   help="for a directory: accept a bundle whose TensorRT engines do not fit (ONNX Runtime only)")
    p.set_defaults(func=cmd_verify)

    p = actions.add_parser("install", parents=[common], help="verify a bundle directory and install it")
    p.add_argument("source", metavar="PATH", help="bundle directory (manifest.json and its files)")
    p.add_argument("--activate", action="store_true", help="also make it the active bundle and reload the daemon")
    p.add_argument("--allow-fallback", action="store_true",
                   help="install although none of its TensorRT engines fits this device (ONNX Runtime only)")
    p.set_defaults(func=cmd_install)

    p = actions.add_parser("activate", parents=[common], help="re-verify an installed bundle and switch to it")
    p.add_argument("bundle", metavar="NAME", help="bundle id (name@hash), name, or id prefix")
    p.set_defaults(func=cmd_activate)

    p = actions.add_parser("rollback", parents=[common], help="swap the active and the previous bundle")
    p.set_defaults(func=cmd_rollback)

    p = actions.add_parser("remove", parents=[common], help="delete an installed bundle (never the active one)")
    p.add_argument("bundle", metavar="NAME", help="bundle id (name@hash), name, or id prefix")
    p.add_argument("--force", action="store_true", help="also remove the previous bundle (loses the rollback)")
    p.set_defaults(func=cmd_remove)

    p = actions.add_parser("build", parents=[common],
                           help="build TensorRT plans on this device from a bundle's ONNX files (into its device/)")
    p.add_argument("bundle", metavar="NAME|PATH",
                   help="an installed bundle (name, id, 'active'), or a bundle directory when it holds a '/' (./b)")
    p.add_argument("--precision", metavar="LIST",
                   help="plans to build, of fp32,fp16,int8 (int8 from the bundle's Q/DQ ONNX); "
                        "default: fp16, and int8 where the bundle has its Q/DQ ONNX")
    p.add_argument("--resolutions", metavar="LIST", help="input sizes, e.g. 320,640; default: every size in the bundle")
    p.add_argument("--workspace", type=int, default=1024, metavar="MiB",
                   help="TensorRT's tactic workspace limit (default 1024)")
    p.add_argument("--force", action="store_true",
                   help="rebuild plans already built for this device and TensorRT version")
    p.set_defaults(func=cmd_build)

    p = actions.add_parser("sign", help="sign a bundle directory's manifest with an ed25519 private key")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory")
    p.add_argument("--key", required=True, metavar="PRIVATE.pem", help="private key from 'engines keygen'")
    p.set_defaults(func=cmd_sign)

    p = actions.add_parser("keygen", help="make an ed25519 signing key pair")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the two PEM files (never overwritten)")
    p.set_defaults(func=cmd_keygen)
    return eng

