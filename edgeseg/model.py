"""A model as the runtime sees it: a backend plus what is needed to feed and read it.

``load_model`` opens a network through a backend, checks that it follows the prototype-mask
contract of docs/architecture.md (one NCHW image input; a [1, 4 + nc + k, N] prediction output and a
[1, k, H/4, W/4] prototype output), reads the class names, stride and normalisation from its
metadata, and fixes the input resolution (the model's own when static, the requested one when
dynamic). Anything that does not fit is refused here, with one line, before a frame is read.
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Final, Literal, Optional, Set, Tuple

from edgeseg.backends.base import Backend, NetworkInfo, TensorInfo, leading_dim
from edgeseg.bundle.device import DeviceInfo, probe_device
from edgeseg.bundle.local import load_merged_manifest
from edgeseg.bundle.manifest import EngineRecord, Manifest, ModelRecord, ir_weights, is_bundle
from edgeseg.bundle.select import PrecisionChoice, candidate_engines
from edgeseg.bundle.selftest import LEDGER, check_loaded
from edgeseg.bundle.verify import file_problem
from edgeseg.errors import BundleError, ConfigError, ModelError
from edgeseg.sources.fsnames import os_error_text, printable_name

log = logging.getLogger(__name__)

Family = Literal["yolov8-seg", "edgeseg"]
#: What runs a model (``model.backend``): see ``load_model``.
BackendChoice = Literal["auto", "onnxruntime", "openvino", "tensorrt"]
BACKENDS: Final[Tuple[str, ...]] = ("auto", "onnxruntime", "openvino", "tensorrt")

#: Input resolutions the decoder supports (multiples of the stride within this range).
MIN_INPUT_SIZE = 320
MAX_INPUT_SIZE = 1280
#: Default input size of a dynamic model whose metadata names none.
DEFAULT_INPUT_SIZE = 640
DEFAULT_STRIDE = 32
#: Letterbox padding value used by the Ultralytics exports (and by edgeseg models).
DEFAULT_PAD_VALUE = 114


@dataclass(frozen=True)
class Normalization:
    """How uint8 pixels become network input: ``(pixel * scale - mean) / std`` per channel.

    Attributes:
        scale: multiplier applied first (1/255 maps 0..255 to 0..1).
        mean, std: per-channel, in the network's channel order.
        rgb: the network expects RGB (images arrive BGR from OpenCV).
        pad_value: letterbox border colour, in 0..255.
    """

    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rgb: bool = True
    pad_value: int = DEFAULT_PAD_VALUE


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a model that preprocessing, decoding and the sinks depend on.

    Attributes:
        name: a short name for results and logs (file stem or bundle name).
        family: output layout family; both families share one decoder.
        class_names: the class table.
        input_size: (height, width) of the network input in use.
        dynamic: the network accepts other input sizes (multiples of ``stride``).
        stride: largest feature stride; dynamic input sizes must be multiples of it.
        num_masks: k, the number of prototypes and mask coefficients.
        pred_index, proto_index: positions of the two outputs in the backend's output list.
        normalization: pixel scaling per the model's metadata.
        max_batch: the most frames one backend call takes (``Backend.max_batch``): 1 for a
            batch-1 network, N for a batch-N engine, None where the batch is symbolic (no limit
            known). The pipeline gathers at most this many frames per ``infer_batch`` call.
    """

    name: str
    family: Family
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    dynamic: bool
    stride: int
    num_masks: int
    pred_index: int
    proto_index: int
    normalization: Normalization = Normalization()
    max_batch: Optional[int] = 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Model:
    """A loaded backend and its spec; for a bundle, also the engine chosen and its manifest."""

    spec: ModelSpec
    backend: Backend
    engine: EngineRecord | None = None
    bundle: Manifest | None = None

    def close(self) -> None:
        self.backend.close()


def _parse_names(raw: str, path: str) -> tuple[str, ...]:
    """Class names from metadata: a Python dict literal (Ultralytics) or a JSON list/dict."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as exc:
            raise ModelError(f"model {path}: metadata 'names' is neither JSON nor a dict literal") from exc
    if isinstance(value, dict):
        keys = sorted(int(k) for k in value)
        if keys != list(range(len(keys))):
            raise ModelError(f"model {path}: metadata 'names' keys must be 0..n-1")
        return tuple(str(value[k] if k in value else value[str(k)]) for k in keys)
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    raise ModelError(f"model {path}: metadata 'names' must be a dict or list of class names")


def _parse_normalization(meta: dict[str, str], path: str) -> Normalization:
    raw = meta.get("edgeseg.normalization")
    if raw is None:
        return Normalization()
    try:
        d = json.loads(raw)
        return Normalization(
            scale=float(d.get("scale", 1 / 255)),
            mean=tuple(float(x) for x in d.get("mean", (0, 0, 0))),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d.get("std", (1, 1, 1))),  # type: ignore[arg-type]
            rgb=bool(d.get("rgb", True)),
            pad_value=int(d.get("pad_value", DEFAULT_PAD_VALUE)),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"model {path}: metadata 'edgeseg.normalization' is not valid: {exc}") from exc


def _shape_text(t: TensorInfo) -> str:
    return f"{t.name} [{', '.join(str(d) for d in t.shape)}]"


def _layout(info: NetworkInfo) -> tuple[int, int]:
    """Indices of the prediction (rank 3) and prototype (rank 4) outputs, or ModelError."""
    ranks = [len(o.shape) for o in info.outputs]
    if sorted(ranks) != [3, 4]:
        found = ", ".join(_shape_text(o) for o in info.outputs)
        raise ModelError(
            f"model {info.path}: not a prototype-mask model; expected outputs [1, 4+nc+k, N] and "
            f"[1, k, H/4, W/4], found {found}"
        )
    return ranks.index(3), ranks.index(4)


def _resolve_input_size(
    info: NetworkInfo, requested: int | None, stride: int, default: int
) -> tuple[tuple[int, int], bool]:
    shape = info.inputs[0].shape
    if len(shape) != 4 or shape[1] not in (3, None) and not isinstance(shape[1], str):
        raise ModelError(f"model {info.path}: expected an NCHW image input, found {_shape_text(info.inputs[0])}")
    h, w = shape[2], shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        if requested is not None and requested != max(h, w):
            log.warning("model %s has a fixed %dx%d input; requested size %d ignored", info.path, w, h, requested)
        return (h, w), False
    size = requested if requested is not None else default
    if not (MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE) or size % stride:
        raise ConfigError(
            f"imgsz {size}: expected a multiple of {stride} from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}"
        )
    return (size, size), True


def spec_from_network(info: NetworkInfo, name: str, imgsz: int | None = None) -> ModelSpec:
    """Check ``info`` against the prototype-mask contract and build its ModelSpec."""
    meta = info.metadata
    pred_i, proto_i = _layout(info)
    pred, proto = info.outputs[pred_i], info.outputs[proto_i]
    channels, k = pred.shape[1], proto.shape[1]
    if not isinstance(k, int) or not isinstance(channels, int):
        raise ModelError(f"model {info.path}: output channel counts must be static, found "
                         f"{_shape_text(pred)}, {_shape_text(proto)}")
    names = _parse_names(meta["names"], info.path) if "names" in meta else None
    nc = len(names) if names is not None else channels - 4 - k
    if nc < 1 or channels != 4 + nc + k:
        raise ModelError(
            f"model {info.path}: {_shape_text(pred)} does not hold 4 box + {nc} class + {k} mask rows"
        )
    if names is None:
        names = tuple(f"class{i}" for i in range(nc))
    stride = int(meta.get("stride", DEFAULT_STRIDE))
    default = DEFAULT_INPUT_SIZE
    if "imgsz" in meta:
        try:
            default = int(max(ast.literal_eval(meta["imgsz"])))
        except (ValueError, SyntaxError, TypeError):
            default = DEFAULT_INPUT_SIZE
    input_size, dynamic = _resolve_input_size(info, imgsz, stride, default)
    family: Family = "edgeseg" if meta.get("edgeseg.family") == "edgeseg" else "yolov8-seg"
    return ModelSpec(
        name=name,
        family=family,
        class_names=names,
        input_size=input_size,
        dynamic=dynamic,
        stride=stride,
        num_masks=k,
        pred_index=pred_i,
        proto_index=proto_i,
        normalization=_parse_normalization(meta, info.path),
        max_batch=leading_dim(info),
    )


def bundle_metadata(m: ModelRecord) -> dict[str, str]:
    """A manifest's model record in the metadata keys ``spec_from_network`` reads.

    For a bundle the manifest is the source of truth (a TensorRT plan carries no metadata).
    """
    return {
        "names": json.dumps(m.class_names),
        "stride": str(m.stride),
        "edgeseg.family": m.family,
        "edgeseg.normalization": json.dumps(m.normalization.model_dump(mode="json")),
    }


@dataclass(frozen=True)
class OpenVinoOptions:
    """How the OpenVINO backend compiles a network (``model.openvino``, with its cache resolved).

    Attributes:
        device: the OpenVINO device (CPU, GPU, GPU.1, NPU, AUTO ...).
        precision: its inference precision: "auto" (the device's default), "f32", "bf16", "f16".
        cache_dir: the compiled-model cache; None = no cache (``edgeseg.app.load_options``
            resolves the configuration's default to ~/.cache/edgeseg/openvino).
    """

    device: str = "CPU"
    precision: str = "auto"
    cache_dir: Optional[str] = None


def engine_file_problem(path: Path, manifest: Manifest, engine: EngineRecord) -> Optional[str]:
    """Why ``engine``'s file (and, for an OpenVINO IR, its .bin weights) is not the one the
    manifest describes, or None."""
    problem = file_problem(path, engine.file, engine.sha256, engine.bytes)
    if problem is None and engine.runtime == "openvino":
        weights = ir_weights(engine.file)
        sha = manifest.extra_files.get(weights)
        problem = f"{weights}: not in the manifest" if sha is None else file_problem(path, weights, sha)
    return problem


def open_engine(
    path: Path, manifest: Manifest, engine: EngineRecord, threads: int = 0, device: str = "auto",
    spin: bool = False, workers: int = 1, openvino: Optional[OpenVinoOptions] = None,
) -> Model:
    """Load one engine of the bundle at ``path``: its hash checked, its spec from the manifest.

    No engine choice and no self-test: ``_load_bundle`` does both around this, and
    ``edgeseg.bundle.selftest.selftest_engine`` loads through it to test a single engine.
    An OpenVINO IR engine is compiled with ``openvino`` (device, inference precision, cache).
    """
    problem = engine_file_problem(path, manifest, engine)
    if problem is not None:
        raise BundleError(f"bundle {path}: {problem}; refusing to load it (re-flash the bundle)")
    meta = bundle_metadata(manifest.model)
    file = path / engine.file
    backend: Backend
    if engine.runtime == "tensorrt":
        from edgeseg.backends.tensorrt import TensorRTBackend  # lazy: imports tensorrt, pycuda

        backend = TensorRTBackend(file, resolution=engine.resolution, metadata=meta, contexts=max(2, workers))
    elif engine.runtime == "openvino":
        backend = _open_openvino(file, openvino or OpenVinoOptions(), threads, workers)
        backend.info = replace(backend.info, metadata={**backend.info.metadata, **meta})
    else:
        from edgeseg.backends.onnxruntime import OnnxRuntimeBackend  # lazy: imports onnxruntime

        backend = OnnxRuntimeBackend(file, threads=threads, device=device, spin=spin)  # type: ignore[arg-type]
        backend.info = replace(backend.info, metadata={**backend.info.metadata, **meta})
    try:
        spec = replace(spec_from_network(backend.info, manifest.name, max(engine.resolution)),
                       max_batch=backend.max_batch)
    except Exception:
        backend.close()
        raise
    return Model(spec, backend, engine=engine, bundle=manifest)


_explained: Set[Tuple[str, str]] = set()


def _explain_once(manifest: Manifest, message: str) -> None:
    """Say once per bundle why ``auto`` passes over engines the bundle offers (the ladder loads
    each resolution through ``_load_bundle``: one line, not one per size)."""
    key = (manifest.name, message)
    if key not in _explained:
        _explained.add(key)
        log.warning("bundle %s: %s", manifest.name, message)


def _explain_auto(manifest: Manifest, here: DeviceInfo) -> None:
    """Why ``auto`` does not serve the bundle's OpenVINO engines here, in one line, if it does not."""
    if not any(e.runtime == "openvino" for e in manifest.engines):
        return
    if here.openvino is None:
        _explain_once(manifest, "its OpenVINO engines are not used: OpenVINO is not installed "
                                "(pip install 'edgeseg[openvino]'); serving its other engines")
    elif not here.x86:
        _explain_once(manifest, "its OpenVINO engines are not preferred off x86 (set model.backend: openvino "
                                "to use them)")


def openvino_selftest_record(engine: EngineRecord, backend: Backend) -> EngineRecord:
    """``engine`` as the self-test ledger should know it when OpenVINO runs it: its own verdict
    (the file name tagged with device and precision, so it is neither mistaken for ONNX Runtime's
    nor cached for another precision); a float network computing in 16 bits (bf16 on a CPU with
    bf16, f16 on a GPU) judged by the fp16 tolerances, an int8 IR by its int8 ones."""
    precision = getattr(backend, "inference_precision", "f32")
    device = getattr(backend, "device", "")
    update: Dict[str, Any] = {"file": f"{engine.file}@openvino-{device}-{precision}"}
    if engine.precision == "fp32":
        update["precision"] = "fp32" if precision == "f32" else "fp16"
    return engine.model_copy(update=update)


def _load_bundle(
    path: Path, imgsz: int | None, threads: int, device: str, spin: bool, precision: PrecisionChoice, workers: int,
    runtime: str = "auto", openvino: Optional[OpenVinoOptions] = None,
) -> Model:
    """Pick the bundle's engine for this device and resolution, check it, load it and self-test it.

    ``runtime`` "onnxruntime", "openvino" or "tensorrt" keeps to that runtime's engines
    (``model.backend``); "auto" prefers TensorRT where a plan fits, then OpenVINO on an x86 CPU
    where it is installed (``edgeseg.bundle.select``), and says in one line why it passes over a
    bundle's OpenVINO engines. ``openvino`` compiles the OpenVINO engines.

    An engine that fails its self-test (``edgeseg.bundle.selftest``) is closed and the next
    candidate (``candidate_engines``: other precisions, then the ONNX Runtime twin) is tried; a
    verdict is kept per engine for the process, so a refused engine is not loaded again and a
    passing one is not tested again (the adaptive ladder loads each resolution through here).
    """
    manifest = load_merged_manifest(path)  # signed engines + the device's own plans
    here = probe_device()
    refused: list[tuple[str, str]] = []  # (engine file, one-line reason)
    if runtime == "auto":
        _explain_auto(manifest, here)
        candidates = candidate_engines(manifest, here, imgsz, precision)
    else:
        try:
            candidates = candidate_engines(manifest, here, imgsz, precision, runtime)
        except BundleError:
            others = candidate_engines(manifest, here, imgsz, precision)  # raises when none runs at all
            if any(e.runtime == runtime for e in others):
                raise
            wanted = max(others[0].resolution)
            have = ", ".join(sorted({e.runtime for e in others}))
            raise BundleError(f"bundle {manifest.name}: model.backend {runtime!r}: no {runtime} engine at {wanted} "
                              f"runs here (it has {have})") from None
    for engine in candidates:
        held = LEDGER.cached(path, engine)
        if held is not None and not held.passed:
            refused.append((engine.file, held.one_line()))
            continue
        try:
            model = open_engine(path, manifest, engine, threads, device, spin, workers, openvino)
        except (BundleError, ModelError) as exc:
            # A plan TensorRT will not deserialise (another TensorRT build, a driver change) or a
            # file that fails its hash is the commonest failure on a device: the next one serves.
            if engine is candidates[-1] and not refused:
                raise
            log.warning("bundle %s: %s", manifest.name, exc)
            refused.append((engine.file, f"{engine.file}: {exc}"))
            continue
        try:
            judged = openvino_selftest_record(engine, model.backend) if engine.runtime == "openvino" else engine
            verdict = check_loaded(model, path, manifest, judged)
        except Exception:
            model.close()
            raise
        if verdict is not None and not verdict.passed:
            model.close()
            refused.append((engine.file, verdict.one_line()))
            continue
        for file, _ in refused:
            LEDGER.fallback(file, engine.file)
        if refused:
            log.warning("bundle %s: %s serves instead of %s (refused above)", manifest.name, engine.file,
                        ", ".join(file for file, _ in refused))
        where = model.backend.info.provider if engine.runtime == "openvino" else here.describe()
        log.info("bundle %s: %s engine %s (%s, %dx%d) on %s", manifest.name, engine.runtime, engine.file,
                 engine.precision, engine.resolution[1], engine.resolution[0], where)
        return model
    size = imgsz if imgsz is not None else (max(candidates[0].resolution) if candidates else "any size")
    raise BundleError(f"bundle {manifest.name}: every engine for {size} that runs here was refused: "
                      + "; ".join(reason for _, reason in refused))


def _open_openvino(file: Path, options: OpenVinoOptions, threads: int, workers: int) -> Backend:
    from edgeseg.backends.openvino import OpenVinoBackend  # lazy: imports openvino

    return OpenVinoBackend(file, device=options.device, precision=options.precision, threads=threads,
                           cache_dir=options.cache_dir, workers=workers)


def _openvino_twin(manifest: Manifest, imgsz: int | None, precision: PrecisionChoice) -> EngineRecord:
    """The bundle's fp32 ONNX engine at ``imgsz`` (the largest size when None): what OpenVINO runs
    of a bundle exported without OpenVINO IR engines (``edgeseg export --openvino`` adds them)."""
    if precision not in ("auto", "fp32"):
        raise ConfigError(f"model.backend 'openvino' runs a bundle's fp32 ONNX at model.openvino.precision; "
                          f"model.precision {precision!r} applies to the bundle's own engines (set it to auto)")
    twins = [e for e in manifest.engines
             if e.runtime == "onnxruntime" and e.precision == "fp32" and e.quantization is None]
    sizes = sorted({max(e.resolution) for e in twins})
    if not sizes:
        raise BundleError(f"bundle {manifest.name}: no fp32 ONNX engine for OpenVINO to run")
    size = sizes[-1] if imgsz is None else imgsz
    at_size = [e for e in twins if max(e.resolution) == size]
    if not at_size:
        raise BundleError(f"bundle {manifest.name}: no fp32 ONNX engine at {size} for OpenVINO; available {sizes}")
    return at_size[0]


def _has_openvino_engines(path: Path) -> bool:
    """The bundle carries OpenVINO IR engines (exported with ``--openvino``); older bundles run
    their fp32 ONNX through OpenVINO instead (``_load_bundle_openvino``)."""
    return any(e.runtime == "openvino" for e in load_merged_manifest(path).engines)


def _load_bundle_openvino(
    path: Path, imgsz: int | None, threads: int, workers: int, precision: PrecisionChoice, options: OpenVinoOptions
) -> Model:
    """A bundle's fp32 ONNX at ``imgsz`` through OpenVINO: hash checked, spec from the manifest,
    and self-tested against the bundle's reference like every engine (refused with its figures)."""
    manifest = load_merged_manifest(path)
    engine = _openvino_twin(manifest, imgsz, precision)
    problem = file_problem(path, engine.file, engine.sha256, engine.bytes)
    if problem is not None:
        raise BundleError(f"bundle {path}: {problem}; refusing to load it (re-flash the bundle)")
    backend = _open_openvino(path / engine.file, options, threads, workers)
    try:
        backend.info = replace(backend.info, metadata={**backend.info.metadata, **bundle_metadata(manifest.model)})
        spec = replace(spec_from_network(backend.info, manifest.name, max(engine.resolution)),
                       max_batch=backend.max_batch)
        model = Model(spec, backend, engine=engine, bundle=manifest)
        verdict = check_loaded(model, path, manifest, openvino_selftest_record(engine, backend))
    except Exception:
        backend.close()
        raise
    if verdict is not None and not verdict.passed:
        model.close()
        raise BundleError(f"bundle {manifest.name}: {verdict.one_line()} (on {backend.info.provider}; "
                          "try model.openvino.precision: f32, or model.backend: onnxruntime)")
    log.info("bundle %s: %s (%dx%d) on %s", manifest.name, engine.file, engine.resolution[1], engine.resolution[0],
             backend.info.provider)
    return model


@dataclass(frozen=True)
class LoadOptions:
    """How every network of one run is loaded: its main model and the adaptive ladder's other sizes.

    Built once from the configuration (``edgeseg.app.load_options``: ``model`` and
    ``pipeline.inference_workers``) and passed as one value, so that a ladder's resolution loaded
    later cannot differ from the first in threads, device or precision. The input size is chosen
    per load (``imgsz``), not here.

    Attributes:
        threads: ONNX Runtime intra-op threads (0: every physical core).
        device: "auto", "cpu" or "cuda" (ONNX Runtime).
        precision: the engine precision to pick from a bundle ("auto": the fastest measured).
        workers: inference workers of the pipeline (a TensorRT engine gets one context each).
        spin: let ONNX Runtime's threads spin-wait between inferences.
        backend: what runs the model (``model.backend``; ``load_model`` says how each is chosen).
        openvino: the OpenVINO backend's device, precision and cache (``model.openvino``).
    """

    threads: int = 0
    device: str = "auto"
    precision: PrecisionChoice = "auto"
    workers: int = 1
    spin: bool = False
    backend: BackendChoice = "auto"
    openvino: OpenVinoOptions = OpenVinoOptions()

    def load(self, path: str | Path, imgsz: int | None = None) -> Model:
        """``load_model(path, imgsz)`` with these options."""
        return load_model(path, imgsz=imgsz, threads=self.threads, device=self.device, spin=self.spin,
                          precision=self.precision, workers=self.workers, backend=self.backend,
                          openvino=self.openvino)


def load_model(
    path: str | Path,
    imgsz: int | None = None,
    threads: int = 0,
    device: str = "auto",
    spin: bool = False,
    precision: PrecisionChoice = "auto",
    workers: int = 1,
    backend: BackendChoice = "auto",
    openvino: Optional[OpenVinoOptions] = None,
) -> Model:
    """Open ``path`` (an .onnx file, an OpenVINO IR .xml or an engine bundle directory) and check
    its layout.

    For a bundle, ``imgsz`` and ``precision`` choose the engine (the largest resolution and the
    fastest precision when not given); for an ONNX file, ``imgsz`` sizes a dynamic input. The
    runtime's own callers pass a ``LoadOptions`` (``options.load(path, imgsz)``).

    ``backend``: "auto" runs an ONNX file on ONNX Runtime, an IR on OpenVINO and a bundle as its
    engines allow (TensorRT where a plan fits, else ONNX Runtime); "openvino" runs the ONNX file,
    the IR or a bundle's fp32 ONNX through OpenVINO (``openvino``: device, precision, cache);
    "onnxruntime" and "tensorrt" keep to that runtime (of a bundle: its engines of that runtime),
    and refuse in one line a file the runtime cannot take.
    """
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name component over 255 bytes, a NUL byte
        raise ModelError(f"model {printable_name(str(path))}: cannot look it up ({os_error_text(exc)})") from None
    if not exists:
        raise ModelError(f"model file not found: {printable_name(str(path))}")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device {device!r}: expected auto, cpu or cuda")
    if backend not in BACKENDS:
        raise ConfigError(f"model.backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if path.is_dir():
        # Resolve the `active` symlink once: a re-flash during loading cannot mix two bundles.
        path = path.resolve()
        if not is_bundle(path):
            raise ModelError(f"model {path}: a directory but not an engine bundle (no manifest.json)")
        if backend == "openvino" and not _has_openvino_engines(path):
            return _load_bundle_openvino(path, imgsz, threads, workers, precision, openvino or OpenVinoOptions())
        return _load_bundle(path, imgsz, threads, device, spin, precision, workers, runtime=backend,
                            openvino=openvino)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".xml"):
        raise ModelError(f"model {path}: expected an .onnx file, an OpenVINO IR .xml or an engine bundle directory")
    if backend == "tensorrt":
        raise ModelError(f"model.backend 'tensorrt': {path} is a plain model file; TensorRT runs the plans of an "
                         "engine bundle (edgeseg export, then edgeseg engines build on the device)")
    if suffix == ".xml" and backend == "onnxruntime":
        raise ModelError(f"model.backend 'onnxruntime': {path} is an OpenVINO IR; use model.backend openvino (or auto)")
    net: Backend
    if backend == "openvino" or suffix == ".xml":
        net = _open_openvino(path, openvino or OpenVinoOptions(), threads, workers)
    else:
        from edgeseg.backends.onnxruntime import OnnxRuntimeBackend  # lazy: imports onnxruntime

        net = OnnxRuntimeBackend(path, threads=threads, device=device, spin=spin)  # type: ignore[arg-type]
    return _model_of(net, path.stem, imgsz)


def _model_of(backend: Backend, name: str, imgsz: int | None) -> Model:
    """``backend``'s network checked against the contract, as a Model (the backend closed on refusal)."""
    try:
        spec = replace(spec_from_network(backend.info, name, imgsz), max_batch=backend.max_batch)
    except Exception:
        backend.close()
        raise
    return Model(spec, backend)
