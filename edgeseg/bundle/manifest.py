"""The engine bundle's manifest: the contract between the export stage and the runtime.

``engines/<bundle>/manifest.json`` describes the model (family, class names, normalisation) and
every engine file in the bundle: its sha256, input resolution, precision, what built it (a
TensorRT version and GPU, or ONNX Runtime) and what it measured at export (latency, accuracy).
The runtime trusts nothing it has not checked against this file, and the export stage writes
nothing else. Unknown keys are refused, as in the configuration: the format is versioned.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Final, List, Literal, Optional, Tuple, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from edgeseg.config.errors import describe_validation_error
from edgeseg.errors import BundleError
from edgeseg.strict import StrictModel

MANIFEST_NAME: Final = "manifest.json"
BUNDLE_FORMAT: Final = "edgeseg-bundle"
BUNDLE_VERSION: Final = 1

#: The largest batch an engine record may name (as `pipeline.batch`, the frames gathered per call).
MAX_ENGINE_BATCH: Final = 32

Precision = Literal["fp32", "fp16", "int8"]
Runtime = Literal["onnxruntime", "tensorrt", "openvino"]
#: How an int8 file was quantised: Q/DQ with symmetric activations (what TensorRT builds INT8
#: engines from), ONNX Runtime's QOperator form (fastest on CPUs), or NNCF post-training
#: quantisation of an OpenVINO IR with the decode head kept in float (export.openvino_quant).
Quantization = Literal["qdq-symmetric", "qoperator", "nncf-int8"]
#: An OpenVINO engine is an IR: its ``file`` the .xml (the network), its weights the .bin beside it.
IR_SUFFIX: Final = ".xml"
IR_WEIGHTS_SUFFIX: Final = ".bin"


def ir_weights(file: str) -> str:
    """The weights file of the OpenVINO IR ``file`` (``x.xml`` -> ``x.bin``), as OpenVINO finds it."""
    return file[: -len(IR_SUFFIX)] + IR_WEIGHTS_SUFFIX if file.endswith(IR_SUFFIX) else file + IR_WEIGHTS_SUFFIX


class NormalizationRecord(StrictModel):
    scale: float = 1.0 / 255.0
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    rgb: bool = True
    pad_value: int = Field(114, ge=0, le=255)


class ModelRecord(StrictModel):
    """What every engine of the bundle computes (one decoder contract)."""

    family: Literal["yolov8-seg", "edgeseg"]
    class_names: List[str] = Field(min_length=1)
    num_masks: int = Field(ge=1)
    stride: int = Field(32, ge=1)
    normalization: NormalizationRecord = Field(default_factory=NormalizationRecord)
    source: str = Field("", description="the model the bundle was exported from")
    source_sha256: str = ""


class BuilderRecord(StrictModel):
    """What produced an engine; a TensorRT plan only runs where these match.

    Identity is the TensorRT version, the compute capability, the SM count and the Jetson board
    (``edgeseg.bundle.verify.incompatibility``); ``gpu`` is the driver's name, for people only
    (every Orin module is "Orin"). ``sm_count`` and ``board`` are absent from manifests written
    before they were recorded, and left out of the JSON when unknown, so that older runtimes,
    which refuse unknown keys, still read new bundles of ONNX Runtime engines.
    """

    runtime: Runtime
    version: str = Field(description="TensorRT, ONNX Runtime or OpenVINO version string")
    gpu: Optional[str] = Field(None, description="GPU name as the driver reports it (display only)")
    compute_capability: Optional[Tuple[int, int]] = None
    sm_count: Optional[int] = Field(None, ge=1, description="streaming multiprocessors of the building GPU")
    board: Optional[str] = Field(None, min_length=1, description="Jetson board (/proc/device-tree/model)")

    @model_serializer(mode="wrap")
    def _leave_out_unrecorded(self, handler: SerializerFunctionWrapHandler) -> Dict[str, Any]:
        doc: Dict[str, Any] = handler(self)
        for key in ("sm_count", "board"):
            if doc.get(key) is None:
                doc.pop(key, None)
        return doc


class LatencyRecord(StrictModel):
    median_ms: float = Field(ge=0)
    p90_ms: float = Field(ge=0)
    device: str = Field(description="where it was measured, e.g. 'CPU x86_64, 2 threads' or 'Orin'")


class AccuracyRecord(StrictModel):
    box_map: float = Field(ge=0, le=1)
    box_map50: float = Field(ge=0, le=1)
    mask_map: float = Field(ge=0, le=1)
    mask_map50: float = Field(ge=0, le=1)
    dataset: str
    images: int = Field(ge=1)


class EngineRecord(StrictModel):
    """One file of the bundle that a backend can load.

    ``max_batch`` is the most frames one call of the engine takes: the batch an export with
    ``--batch N`` built in (a symbolic batch dimension in the ONNX, the profile min 1 / opt N /
    max N of a TensorRT plan, and what a device builds its plan from the ONNX with). It is 1 for
    manifests written before batches existed and left out of the JSON when 1, so that such
    bundles stay byte for byte what they were and older runtimes, which refuse unknown keys,
    still read every batch-1 bundle.
    """

    file: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    resolution: Tuple[int, int]
    precision: Precision
    quantization: Optional[Quantization] = None
    builder: BuilderRecord
    latency: Optional[LatencyRecord] = None
    accuracy: Optional[AccuracyRecord] = None
    max_batch: int = Field(1, ge=1, le=MAX_ENGINE_BATCH, description="most frames one call of the engine takes")

    @property
    def runtime(self) -> Runtime:
        return self.builder.runtime

    @model_serializer(mode="wrap")
    def _leave_out_batch_of_one(self, handler: SerializerFunctionWrapHandler) -> Dict[str, Any]:
        doc: Dict[str, Any] = handler(self)
        if doc.get("max_batch") == 1:
            doc.pop("max_batch", None)
        return doc


class SelfTestRecord(StrictModel):
    """Where a bundle keeps the reference of its engine self-test (``edgeseg.bundle.selftest``).

    The reference holds the instances the fp32 ONNX decoded through ONNX Runtime on a few
    calibration images, per resolution; every engine is compared with it before it serves.
    Every file named here is also in ``Manifest.extra_files``, so its sha256 is verified like
    every other file of the bundle (checked on parsing).
    """

    reference: str = Field(min_length=1, description="the reference JSON, e.g. selftest/reference.json")
    images: List[str] = Field(min_length=1, description="the self-test images, in the bundle")
    resolutions: List[int] = Field(min_length=1, description="input sizes the reference covers")


class Manifest(StrictModel):
    format: Literal["edgeseg-bundle"] = BUNDLE_FORMAT
    version: Literal[1] = BUNDLE_VERSION
    name: str = Field(min_length=1)
    created: str = ""
    model: ModelRecord
    engines: List[EngineRecord] = Field(min_length=1)
    #: Files kept beside the engines that no backend loads directly (e.g. the Q/DQ ONNX that a
    #: device builds its TensorRT INT8 engine from, the .bin weights of an OpenVINO IR engine),
    #: name -> sha256.
    extra_files: Dict[str, str] = Field(default_factory=dict)
    #: The engine self-test's reference; None in bundles exported before self-tests existed.
    selftest: Optional[SelfTestRecord] = None

    @model_validator(mode="after")
    def _selftest_files_are_verified(self) -> Manifest:
        for e in self.engines:
            # An IR is two files: the .xml the record hashes and the .bin of its weights, which
            # must be hashed too (in extra_files), or weights swapped under a good .xml would load.
            if e.runtime == "openvino":
                if not e.file.endswith(IR_SUFFIX):
                    raise ValueError(f"engine {e.file}: an openvino engine is an IR {IR_SUFFIX} file")
                if ir_weights(e.file) not in self.extra_files:
                    raise ValueError(f"engine {e.file}: its weights {ir_weights(e.file)} are not in extra_files "
                                     "(their sha256 would go unchecked)")
        if self.selftest is not None:
            files = [self.selftest.reference, *self.selftest.images]
            unlisted = [f for f in files if f not in self.extra_files]
            if unlisted:
                raise ValueError(f"selftest file {unlisted[0]} is not in extra_files (its sha256 would go unchecked)")
        return self

    @model_serializer(mode="wrap")
    def _leave_out_absent_selftest(self, handler: SerializerFunctionWrapHandler) -> Dict[str, Any]:
        """No ``selftest`` key without a reference: older runtimes, which refuse unknown keys, still
        read such bundles, and their manifests stay byte for byte what they were."""
        doc: Dict[str, Any] = handler(self)
        if doc.get("selftest") is None:
            doc.pop("selftest", None)
        return doc

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


_Record = TypeVar("_Record", bound=BaseModel)


def parse_record(text: str, model: type[_Record], origin: str) -> _Record:
    """Validate JSON ``text`` as ``model`` (a manifest, a device manifest), or raise a one-line
    BundleError naming ``origin``."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{origin}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:  # "[[[[..." deeper than the parser recurses
        raise BundleError(f"{origin}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # a number too long to convert (the int digit limit since 3.8.14/3.11)
        raise BundleError(f"{origin}: not valid JSON ({' '.join(str(exc).split(';')[0].split())[:120]})") from None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise BundleError(f"{origin}: {describe_validation_error(exc)}") from None


def parse_manifest(text: str, origin: str) -> Manifest:
    """Validate manifest JSON text, or raise a one-line BundleError naming ``origin``."""
    return parse_record(text, Manifest, origin)


# -- reading a bundle's files: never through a symbolic link -----------------------------------
#
# These live beside the manifest because the manifest is the first file every reader opens; the
# engine store (edgeseg.flash.store) opens the files the manifest lists with the same function.


def link_refusal(name: str) -> str:
    """The one-line refusal of a link at ``name`` (relative to the bundle; its target unsaid)."""
    return f"{name}: a symbolic link; a bundle holds regular files only (a link can lead out of it)"


def link_on_the_way(root: Path, parts: Tuple[str, ...]) -> bool:
    """Whether ``root/parts[0]/.../parts[-1]``, or a directory on the way, is a symbolic link."""
    p = root
    for part in parts:
        p = p / part
        if p.is_symlink():
            return True
    return False


def open_in_bundle(root: Path, name: str) -> Optional[int]:
    """A read-only descriptor of the regular file ``root/name``; None when there is none (absent,
    or a directory, a device, a FIFO in its place).

    Each component is opened relative to the one before with ``O_NOFOLLOW``, so neither the
    file nor a directory on the way may be a symbolic link, and a link swapped in between a
    check and the open cannot lead out either. A link raises BundleError naming only ``name``.
    All links are refused, also those that stay inside: a bundle is what ``export`` writes
    (regular files), an installed bundle holds copies anyway, and judging where a link leads
    means resolving it, which is the very thing that leaks. Any other failure (permission, I/O)
    is raised as the OSError it is, for the caller to say in its own words. ``root`` itself is
    opened as given: it is the path the user named.
    """
    parts = PurePosixPath(name).parts
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    try:
        for part in parts[:-1]:
            step = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = step
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) or (
            exc.errno == errno.ENOTDIR and link_on_the_way(root, parts)
        ):
            raise BundleError(link_refusal(name)) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        return None
    return leaf


def read_manifest(bundle_dir: str | Path) -> Tuple[Manifest, bytes]:
    """The bundle's manifest and its exact bytes (what a signature and a bundle id cover).

    The one reader of ``manifest.json``: every command of ``edgeseg engines`` and the runtime
    read it here, so a manifest is refused for the same reason in the same words by each. The
    file is opened without following links (``open_in_bundle``), must be UTF-8 and valid.
    BundleError in one line naming ``manifest.json`` (relative: callers say which bundle, and a
    staging directory's name means nothing to the user).
    """
    try:
        fd = open_in_bundle(Path(bundle_dir), MANIFEST_NAME)
        if fd is None:
            raise BundleError(f"not an engine bundle (no {MANIFEST_NAME})")
        with os.fdopen(fd, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise BundleError(f"{MANIFEST_NAME}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        raise BundleError(f"{MANIFEST_NAME}: not UTF-8 text ({bad})") from None
    return parse_manifest(text, MANIFEST_NAME), raw


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """The manifest of ``bundle_dir`` (``read_manifest``); BundleError naming the bundle."""
    try:
        return read_manifest(bundle_dir)[0]
    except BundleError as exc:
        raise BundleError(f"bundle {bundle_dir}: {exc}") from None


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()
