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
from typing import Literal, Optional

from edgeseg.backends.base import Backend, NetworkInfo, TensorInfo, leading_dim
from edgeseg.bundle.device import probe_device
from edgeseg.bundle.local import load_merged_manifest
from edgeseg.bundle.manifest import EngineRecord, Manifest, ModelRecord, is_bundle
from edgeseg.bundle.select import PrecisionChoice, candidate_engines
from edgeseg.bundle.selftest import LEDGER, check_loaded
from edgeseg.bundle.verify import file_problem
from edgeseg.errors import BundleError, ConfigError, ModelError
from edgeseg.sources.fsnames import os_error_text, printable_name

log = logging.getLogger(__name__)

Family = Literal["yolov8-seg", "edgeseg"]

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


def open_engine(
    path: Path, manifest: Manifest, engine: EngineRecord, threads: int = 0, device: str = "auto",
    spin: bool = False, workers: int = 1,
) -> Model:
    """Load one engine of the bundle at ``path``: its hash checked, its spec from the manifest.

    No engine choice and no self-test: ``_load_bundle`` does both around this, and
    ``edgeseg.bundle.selftest.selftest_engine`` loads through it to test a single engine.
    """
    problem = file_problem(path, engine.file, engine.sha256, engine.bytes)
    if problem is not None:
        raise BundleError(f"bundle {path}: {problem}; refusing to load it (re-flash the bundle)")
    meta = bundle_metadata(manifest.model)
    file = path / engine.file
    backend: Backend
    if engine.runtime == "tensorrt":
        from edgeseg.backends.tensorrt import TensorRTBackend  # lazy: imports tensorrt, pycuda

        backend = TensorRTBackend(file, resolution=engine.resolution, metadata=meta, contexts=max(2, workers))
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


def _load_bundle(
    path: Path, imgsz: int | None, threads: int, device: str, spin: bool, precision: PrecisionChoice, workers: int
) -> Model:
    """Pick the bundle's engine for this device and resolution, check it, load it and self-test it.

    An engine that fails its self-test (``edgeseg.bundle.selftest``) is closed and the next
    candidate (``candidate_engines``: other precisions, then the ONNX Runtime twin) is tried; a
    verdict is kept per engine for the process, so a refused engine is not loaded again and a
    passing one is not tested again (the adaptive ladder loads each resolution through here).
    """
    manifest = load_merged_manifest(path)  # signed engines + the device's own plans
    here = probe_device()
    refused: list[tuple[str, str]] = []  # (engine file, one-line reason)
    candidates = candidate_engines(manifest, here, imgsz, precision)
    for engine in candidates:
        held = LEDGER.cached(path, engine)
        if held is not None and not held.passed:
            refused.append((engine.file, held.one_line()))
            continue
        try:
            model = open_engine(path, manifest, engine, threads, device, spin, workers)
        except (BundleError, ModelError) as exc:
            # A plan TensorRT will not deserialise (another TensorRT build, a driver change) or a
            # file that fails its hash is the commonest failure on a device: the next one serves.
            if engine is candidates[-1] and not refused:
                raise
            log.warning("bundle %s: %s", manifest.name, exc)
            refused.append((engine.file, f"{engine.file}: {exc}"))
            continue
        try:
            verdict = check_loaded(model, path, manifest, engine)
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
        log.info("bundle %s: %s engine %s (%s, %dx%d) on %s", manifest.name, engine.runtime, engine.file,
                 engine.precision, engine.resolution[1], engine.resolution[0], here.describe())
        return model
    size = imgsz if imgsz is not None else (max(candidates[0].resolution) if candidates else "any size")
    raise BundleError(f"bundle {manifest.name}: every engine for {size} that runs here was refused: "
                      + "; ".join(reason for _, reason in refused))


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
    """

    threads: int = 0
    device: str = "auto"
    precision: PrecisionChoice = "auto"
    workers: int = 1
    spin: bool = False

    def load(self, path: str | Path, imgsz: int | None = None) -> Model:
        """``load_model(path, imgsz)`` with these options."""
        return load_model(path, imgsz=imgsz, threads=self.threads, device=self.device, spin=self.spin,
                          precision=self.precision, workers=self.workers)


def load_model(
    path: str | Path,
    imgsz: int | None = None,
    threads: int = 0,
    device: str = "auto",
    spin: bool = False,
    precision: PrecisionChoice = "auto",
    workers: int = 1,
) -> Model:
    """Open ``path`` (an .onnx file or an engine bundle directory) and check its layout.

    For a bundle, ``imgsz`` and ``precision`` choose the engine (the largest resolution and the
    fastest precision when not given); for an ONNX file, ``imgsz`` sizes a dynamic input. The
    runtime's own callers pass a ``LoadOptions`` (``options.load(path, imgsz)``).
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
    if path.is_dir():
        # Resolve the `active` symlink once: a re-flash during loading cannot mix two bundles.
        path = path.resolve()
        if not is_bundle(path):
            raise ModelError(f"model {path}: a directory but not an engine bundle (no manifest.json)")
        return _load_bundle(path, imgsz, threads, device, spin, precision, workers)
    if path.suffix.lower() != ".onnx":
        raise ModelError(f"model {path}: expected an .onnx file or an engine bundle directory")
    from edgeseg.backends.onnxruntime import OnnxRuntimeBackend  # lazy: imports onnxruntime

    backend = OnnxRuntimeBackend(path, threads=threads, device=device, spin=spin)  # type: ignore[arg-type]
    try:
        spec = replace(spec_from_network(backend.info, path.stem, imgsz), max_batch=backend.max_batch)
    except Exception:
        backend.close()
        raise
    return Model(spec, backend)
