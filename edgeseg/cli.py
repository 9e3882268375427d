"""The ``edgeseg`` command: run, eval, bench.

Every command validates its whole configuration (file plus flags) before it opens anything, and
every expected failure is an EdgesegError that reaches the user as one line on stderr with a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional

from pydantic import BaseModel

from edgeseg import __version__
from edgeseg.config import Config, load_config
from edgeseg.config.command import add_config_parser
from edgeseg.config.schema import ModelConfig, PipelineConfig, PostprocessConfig
from edgeseg.errors import ConfigError, EdgesegError, ExportError
from edgeseg.sources.uri import mask_credentials

if TYPE_CHECKING:
    from edgeseg.app import Runtime

log = logging.getLogger("edgeseg")

#: Exit code for a run stopped by SIGINT/SIGTERM after flushing: a clean, requested stop.
EXIT_OK = 0
EXIT_INTERRUPTED_TWICE = 130


#: ``bench --frames`` and ``--warmup``: at least one timed frame (the source loops, so 0 would
#: never end), and at most a million (an hour at 300 FPS) so a typo cannot run for days.
BENCH_MAX_FRAMES = 1_000_000
BENCH_MAX_WARMUP = 10_000
_BOUND_CHECKS: tuple[tuple[str, str, Callable[[float, float], bool]], ...] = (
    ("ge", ">=", lambda v, b: v >= b),
    ("gt", ">", lambda v, b: v > b),
    ("le", "<=", lambda v, b: v <= b),
    ("lt", "<", lambda v, b: v < b),
    ("multiple_of", "a multiple of", lambda v, b: v % b == 0),
)


def _number(kind: type[int] | type[float], **bounds: float) -> Callable[[str], float]:
    """An argparse ``type``: ``kind`` within ``bounds`` (ge, gt, le, lt, multiple_of).

    A value out of range (or NaN, or infinite) is refused by argparse with one line naming the
    flag and the range, before any configuration is read or any model loaded.
    """
    what = "an integer" if kind is int else "a number"
    limits = [f"{word} {bounds[name]}" for name, word, _ in _BOUND_CHECKS if bounds.get(name) is not None]
    expected = " ".join([what, " and ".join(limits)]).strip()

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or not all(
            check(value, bounds[name]) for name, _, check in _BOUND_CHECKS if bounds.get(name) is not None
        ):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _config_number(section: type[BaseModel], dotted: str, kind: type[int] | type[float]) -> Callable[[str], float]:
    """``_number`` with the bounds of configuration field ``dotted`` (``section.field``), so a flag
    and the file agree, and the message names the field as a config error would."""
    bounds = {
        name: getattr(rule, name)
        for rule in section.model_fields[dotted.rpartition(".")[2]].metadata
        for name, _, _ in _BOUND_CHECKS
        if getattr(rule, name, None) is not None
    }
    parse = _number(kind, **bounds)

    def parse_field(text: str) -> float:
        try:
            return parse(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"field '{dotted}': {exc}") from None

    parse_field.__name__ = kind.__name__
    return parse_field


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as every other edgeseg error: one ``edgeseg:`` line, exit 2.

    (argparse's own form is a usage block plus an error line; subcommand parsers inherit this.)
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"edgeseg: {' '.join(message.split())} (see {self.prog} --help)\n")


def _add_common(p: argparse.ArgumentParser, *, source: bool = True, cameras: bool = False) -> None:
    """The flags of every pipeline command; ``cameras``: --source repeatable, ``NAME=URI`` naming it."""
    p.add_argument("--config", metavar="FILE", help="YAML configuration (flags override it)")
    p.add_argument("--model", metavar="M", help="ONNX model (or engine bundle directory)")
    if source:
        from edgeseg.sources import describe_sources

        if cameras:
            p.add_argument("--source", action="append", metavar="[NAME=]URI",
                           help="frame source, repeatable: several are served as cameras in one process\n"
                                "(they replace the config's source.uri or cameras:). NAME= names the camera\n"
                                "(letters, digits, _ and -; default: from the URI):\n" + describe_sources())
        else:
            p.add_argument("--source", metavar="URI", help="frame source:\n" + describe_sources())
        p.add_argument("--loop", action="store_true", default=None, help="restart a file/folder source at its end")
    p.add_argument("--imgsz", type=_config_number(ModelConfig, "model.imgsz", int),
                   help="input size for dynamic models (multiple of 32, 320..1280)")
    p.add_argument("--conf", type=_config_number(PostprocessConfig, "postprocess.conf_threshold", float),
                   help="confidence threshold")
    p.add_argument("--nms", choices=["gaussian", "linear", "hard"], help="Soft-NMS kind or hard NMS")
    p.add_argument("--iou", type=_config_number(PostprocessConfig, "postprocess.iou_threshold", float),
                   help="NMS IoU threshold")
    p.add_argument("--max-det", type=_config_number(PostprocessConfig, "postprocess.max_detections", int),
                   help="most instances per frame")
    p.add_argument("--threads", type=_config_number(ModelConfig, "model.threads", int),
                   help="threads per inference (0: all cores)")
    p.add_argument("--inference-workers", type=_config_number(PipelineConfig, "pipeline.inference_workers", int),
                   help="frames inferred concurrently (default 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="ONNX Runtime device")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], help="engine precision of a bundle")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "openvino", "tensorrt"],
                   help="what runs the model (auto: ONNX Runtime for an ONNX file, a bundle's own choice)")
    p.add_argument("--ov-device", metavar="DEVICE",
                   help="OpenVINO device: CPU, GPU, GPU.1, NPU, AUTO (with --backend openvino)")
    p.add_argument("--ov-precision", choices=["auto", "f32", "bf16", "f16"],
                   help="OpenVINO inference precision (auto: the device's default, bf16 on a CPU with bf16)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags that were given, as a nested document to lay over the config file."""
    table: dict[str, tuple[str, str]] = {
        "model": ("model", "path"), "imgsz": ("model", "imgsz"), "threads": ("model", "threads"),
        "device": ("model", "device"), "precision": ("model", "precision"), "backend": ("model", "backend"),
        "source": ("source", "uri"), "loop": ("source", "loop"),
        "conf": ("postprocess", "conf_threshold"), "nms": ("postprocess", "nms"),
        "iou": ("postprocess", "iou_threshold"), "max_det": ("postprocess", "max_detections"),
        "mask_format": ("output", "mask_format"), "max_frames": ("pipeline", "max_frames"),
        "inference_workers": ("pipeline", "inference_workers"), "batch": ("pipeline", "batch"),
    }
    out: dict[str, Any] = {}
    for flag, (section, key) in table.items():
        value = getattr(args, flag, None)
        if value is not None and not isinstance(value, list):  # run's repeated --source: below
            out.setdefault(section, {})[key] = value
    for flag, key in (("ov_device", "device"), ("ov_precision", "precision")):
        if getattr(args, flag, None) is not None:
            out.setdefault("model", {}).setdefault("openvino", {})[key] = getattr(args, flag)
    if getattr(args, "log_level", None):
        out["log_level"] = args.log_level
    if getattr(args, "sink", None):
        out.setdefault("output", {})["sinks"] = list(args.sink)
    if getattr(args, "track", False):
        out.setdefault("tracker", {})["enabled"] = True
    if getattr(args, "camera", None):
        out.setdefault("source", {})["name"] = args.camera
    if isinstance(getattr(args, "source", None), list):  # run: --source repeatable, NAME=URI
        _source_overrides(args.source, getattr(args, "camera", None), out)
    return out


def _source_overrides(values: list[str], camera: str | None, out: dict[str, Any]) -> None:
    """Lay ``run``'s --source flags over ``out``: one is ``source.uri`` (and ``source.name`` when
    given as NAME=URI), several are a ``cameras:`` list. Either replaces what the file gives for
    its sources (its ``cameras:`` list, or its ``source.uri`` and ``source.name``), as any flag
    replaces the file's value; the rest of ``source:`` stays, the cameras' defaults."""
    from edgeseg.config.cameras import split_named_source

    try:
        sources = [split_named_source(text) for text in values]
    except ValueError as exc:
        raise ConfigError(f"--source: {exc}") from None
    if len(sources) == 1:
        name, uri = sources[0]
        section = out.setdefault("source", {})
        if name is not None and camera is not None and name != camera:
            raise ConfigError(f"--camera {camera!r} and --source {name}=...: two names for one camera, give one")
        section.update({"uri": uri, **({"name": name} if name is not None else {})})
        out["cameras"] = []
        return
    if camera is not None:
        raise ConfigError("--camera names the one source: with several --source, name each as --source NAME=URI")
    out.setdefault("source", {}).update({"uri": None, "name": None})
    out["cameras"] = [{"uri": uri, **({"name": name} if name is not None else {})} for name, uri in sources]


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _load(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    overrides = _overrides(args)
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    config = load_config(args.config, overrides)
    _configure_logging(config.log_level)
    return config


class _StopOnSignal:
    """SIGINT/SIGTERM ask the pipeline to stop and flush; a second signal exits at once."""

    def __init__(self, stop: Callable[[], None]):
        self._stop = stop
        self._count = 0
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self._count += 1
        if self._count > 1:
            raise SystemExit(EXIT_INTERRUPTED_TWICE)
        log.info("%s: finishing frames in flight, then exiting", signal.Signals(signum).name)
        self._stop()

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from edgeseg.app import build_pipeline, build_runtime
    from edgeseg.progress import progress_bar

    config = _load(args)
    runtime = build_runtime(config)
    try:
        with progress_bar(_run_total(config, runtime), "run") as bar:
            pipeline = build_pipeline(config, runtime, on_result=lambda _r: bar.update(1))
            stopper = _StopOnSignal(pipeline.stop)
            try:
                counters = pipeline.run()
            finally:
                stopper.restore()
    finally:
        runtime.close()
    specs = [*config.output.sinks, *(s for c in runtime.cameras for s in c.spec.sinks)]
    sinks = ", ".join(mask_credentials(spec) for spec in specs) or "no sinks"
    cameras = pipeline.cameras()
    print(
        f"run: {counters.processed} frames in {counters.elapsed_s:.1f} s ({counters.fps:.2f} FPS), "
        f"{counters.instances} instances, {sum(c.skipped for c in cameras)} skipped, {pipeline.drops} dropped, "
        f"{counters.sink_errors} sink errors; wrote {sinks}"
    )
    if len(cameras) > 1:
        for c in cameras:
            print(f"  camera {c.name}: {c.processed} frames, {c.skipped} skipped, {c.dropped} dropped")
    return EXIT_OK


def _run_total(config: Config, runtime: Runtime) -> Optional[int]:
    """Frames the progress bar expects: every camera's file length (capped by max_frames), or
    None when one of them is live, looping or of unknown length."""
    total = 0
    for camera in runtime.cameras:
        n = None if camera.spec.source.loop else camera.source.length
        if config.pipeline.max_frames:
            n = min(n or config.pipeline.max_frames, config.pipeline.max_frames)
        if n is None:
            return None
        total += n
    return total


def cmd_eval(args: argparse.Namespace) -> int:
    from edgeseg.evaluation.coco import evaluate

    config = _load(args, {"postprocess": _eval_postprocess(args)})
    report = evaluate(config, args.images, args.annotations, args.out)
    print(report.summary_line())
    return EXIT_OK


def _eval_postprocess(args: argparse.Namespace) -> dict[str, Any]:
    """COCO protocol defaults (as Ultralytics' validator), unless the user set them."""
    from edgeseg.evaluation.coco import EVAL_POSTPROCESS

    return {k: v for k, v in EVAL_POSTPROCESS.items() if not _flag_given(args, k)}


def _flag_given(args: argparse.Namespace, key: str) -> bool:
    flag = {"conf_threshold": "conf", "iou_threshold": "iou", "max_detections": "max_det", "nms": "nms"}.get(key)
    return flag is not None and getattr(args, flag, None) is not None


def cmd_bench(args: argparse.Namespace) -> int:
    from edgeseg.bench import run_bench

    config = _load(args, {"source": {"loop": True}})
    report = run_bench(config, frames=args.frames, warmup=args.warmup, sequential=not args.no_sequential)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.as_text())
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from edgeseg.config import DEFAULT_SERVICE_CONFIG
    from edgeseg.service.daemon import Daemon

    if args.config is None and os.path.isfile(DEFAULT_SERVICE_CONFIG):
        args.config = DEFAULT_SERVICE_CONFIG
    daemon = Daemon(args.config, _overrides(args))
    daemon.install_signal_handlers()
    return daemon.run()


def cmd_export(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level or "info")
    try:
        from export.pipeline import export_bundle, parse_precisions, parse_resolutions
        from export.recipe import build_options
    except ImportError as exc:  # the export stage's own dependencies are an extra
        raise ExportError.missing_dependency("edgeseg export", exc) from None

    overrides = {
        "model": args.model, "out": args.out,
        "resolutions": list(parse_resolutions(args.resolutions)) if args.resolutions else None,
        "precision": list(parse_precisions(args.precision)) if args.precision else None,
        "calibration": args.calibration, "calibration_limit": args.calibration_limit,
        "val_images": args.val_images, "val_annotations": args.val_annotations,
        "threads": args.threads, "latency_runs": args.latency_runs, "selftest_images": args.selftest_images,
        "batch": args.batch, "openvino": args.openvino,
    }
    result = export_bundle(build_options(args.recipe, overrides))
    engines = result.manifest.engines
    sizes = sorted({max(e.resolution) for e in engines})
    print(
        f"export: bundle {result.bundle} with {len(engines)} engines at {','.join(map(str, sizes))} "
        f"({', '.join(sorted({e.runtime + ' ' + e.precision for e in engines}))}); report {result.report}"
    )
    return EXIT_OK


def cmd_calibration_collect(args: argparse.Namespace) -> int:
    from edgeseg.calibration import collect_frames
    from edgeseg.sources.base import SourceOptions

    _configure_logging(args.log_level or "info")
    written = collect_frames(args.source, args.count, Path(args.out), interval_s=args.interval,
                             options=SourceOptions())
    print(f"calibration: wrote {written} frames from {mask_credentials(args.source)} to {args.out}")
    return EXIT_OK


def _add_export_stage_parsers(sub: argparse._SubParsersAction) -> None:
    """The export stage's own commands (synth, train, ...), when its extra is installed.

    They live in ``export/`` with their heavy imports; without the export extra the runtime's
    commands still work and these are simply absent from the help.
    """
    try:
        from export.data.cli import add_synth_parser
        from export.distill.cli import add_distill_parser
        from export.recipes.cli import add_recipe_parser
        from export.slim.cli import add_fold_parser, add_prune_parser
        from export.train.cli import add_train_parser
    except ImportError:
        return
    for add in (add_synth_parser, add_train_parser, add_distill_parser, add_prune_parser, add_fold_parser,
                add_recipe_parser):
        add(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeseg",
        description="Real-time instance segmentation on edge devices.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="segment a source and write the results", formatter_class=argparse.RawTextHelpFormatter
    )
    _add_common(run, cameras=True)
    from edgeseg.sinks import describe_sinks  # the sink registry is the one list of kinds

    run.add_argument("--sink", action="append", metavar="KIND:PATH",
                     help="output, repeatable:\n" + describe_sinks())
    run.add_argument("--mask-format", choices=["rle", "polygon", "none"], help="mask encoding in JSON outputs")
    run.add_argument("--max-frames", type=_config_number(PipelineConfig, "pipeline.max_frames", int),
                     help="stop after N frames per camera (0: until the source ends)")
    run.add_argument("--batch", type=_config_number(PipelineConfig, "pipeline.batch", int),
                     help="frames of different cameras per inference call (at most the engine's batch;\n"
                          "a batch-1 engine serves the cameras one frame at a time)")
    run.add_argument("--track", action="store_true",
                     help="track objects: track_id on every instance (frame result v3), zones, lines and\n"
                          "events from the config (tracker:, zones:, lines:, events:; sink events:PATH)")
    run.add_argument("--camera", metavar="NAME", help="the camera's name in events (default: from the source URI)")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", help="COCO box and mask mAP on an annotated image folder")
    _add_common(ev, source=False)
    ev.add_argument("--images", required=True, metavar="DIR", help="folder with the annotated images")
    ev.add_argument("--annotations", required=True, metavar="COCO.json", help="COCO instances json")
    ev.add_argument("--out", required=True, metavar="results.json", help="COCO results file to write")
    ev.set_defaults(func=cmd_eval)

    bench = sub.add_parser("bench", help="per-stage latency, pipeline FPS and sequential FPS",
                           formatter_class=argparse.RawTextHelpFormatter)
    _add_common(bench)
    bench.add_argument("--frames", type=_number(int, ge=1, le=BENCH_MAX_FRAMES), default=200,
                       help=f"frames to time, 1..{BENCH_MAX_FRAMES} (the source loops)")
    bench.add_argument("--warmup", type=_number(int, ge=0, le=BENCH_MAX_WARMUP), default=5,
                       help=f"untimed frames first, 0..{BENCH_MAX_WARMUP}")
    bench.add_argument("--no-sequential", action="store_true", help="skip the sequential baseline")
    bench.add_argument("--sink", action="append", metavar="KIND:PATH",
                       help="also write to these sinks:\n" + describe_sinks())
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(func=cmd_bench)

    serve = sub.add_parser("serve", help="run as a service: sd_notify, watchdog, SIGHUP reload, journald logs",
                           formatter_class=argparse.RawTextHelpFormatter)
    _add_common(serve)
    serve.add_argument("--sink", action="append", metavar="KIND:PATH",
                       help="outputs besides the config's:\n" + describe_sinks())
    serve.set_defaults(func=cmd_serve)

    from edgeseg.flash.cli import add_engines_parser

    add_engines_parser(sub)
    from edgeseg.doctor import add_doctor_parser

    add_doctor_parser(sub)
    add_config_parser(sub)
    from edgeseg.evaluation.tracks import add_eval_tracks_parser

    add_eval_tracks_parser(sub)
    _add_export_stage_parsers(sub)

    ex = sub.add_parser("export", help="build an engine bundle from an ONNX model (needs edgeseg[export])")
    ex.add_argument("--recipe", metavar="FILE", help="YAML recipe holding the flags below (flags override it)")
    ex.add_argument("--model", metavar="MODEL.onnx", help="prototype-mask ONNX model")
    ex.add_argument("--out", metavar="engines/NAME", help="bundle directory to write")
    ex.add_argument("--resolutions", metavar="LIST", help="e.g. 320,416,512,640 (dynamic models)")
    ex.add_argument("--precision", metavar="LIST", help="fp32, fp16, int8 (default fp16,int8)")
    ex.add_argument("--calibration", metavar="DIR", help="calibration images for int8")
    ex.add_argument("--calibration-limit", type=int, metavar="N", help="use at most N calibration images")
    ex.add_argument("--val-images", metavar="DIR", help="annotated images for accuracy in the report")
    ex.add_argument("--val-annotations", metavar="COCO.json", help="their COCO instances json")
    ex.add_argument("--threads", type=int, help="ONNX Runtime threads for measurements")
    ex.add_argument("--latency-runs", type=int, help="timed inferences per engine (default 20)")
    ex.add_argument("--selftest-images", type=int, metavar="N",
                    help="images whose fp32 outputs the bundle carries for the engine self-test (default 4; 0: none)")
    ex.add_argument("--batch", type=int, metavar="N",
                    help="most frames per inference call (several cameras): ONNX with a symbolic batch, TensorRT "
                         "profile min 1 / opt N / max N (default 1)")
    ex.add_argument("--openvino", action="store_true", default=None,
                    help="add OpenVINO IR engines: fp32 per resolution, and NNCF int8 (decode head in float, "
                         "gated on accuracy) where int8 is asked (needs edgeseg[openvino] and nncf)")
    ex.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    ex.set_defaults(func=cmd_export)

    cal = sub.add_parser("calibration", help="calibration images for int8 export")
    cal_sub = cal.add_subparsers(dest="action", required=True, metavar="ACTION")
    collect = cal_sub.add_parser("collect", help="save N frames spread over a source into a folder")
    collect.add_argument("--source", required=True, metavar="URI", help="any source URI (camera, stream, file, folder)")
    collect.add_argument("--count", type=int, default=100, help="frames to save (default 100)")
    collect.add_argument("--out", required=True, metavar="DIR", help="folder to write calib_NNNNNN.jpg into")
    collect.add_argument("--interval", type=float, default=1.0, help="seconds between frames of a live source")
    collect.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    collect.set_defaults(func=cmd_calibration_collect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from edgeseg.platform.allocator import pin_mmap_threshold

    pin_mmap_threshold()  # before the first frame: big per-frame buffers go back to the system
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except EdgesegError as exc:
        print(f"edgeseg: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever a message holds
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgeseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED_TWICE


if __name__ == "__main__":
    sys.exit(main())
