"""TensorRT decisions that need no TensorRT: versions, buffer plans, profiles, builder flags.

Plain Python and numpy, so that every decision is tested on machines without a GPU. The two
modules that do call TensorRT (``edgeseg.backends.tensorrt`` at run time, ``edgeseg.backends.trt_build``
at build time) only carry out what this module decides, which keeps their untestable part small.
The version facts are those of NVIDIA's Python bindings per release (docs/tensorrt.md): 8.5
(JetPack 5.1), 8.6 (JetPack 6.0), 10.x (JetPack 6.1/6.2, desktops) and 11.x (desktops).

Functions here raise ``ValueError`` with a complete sentence; callers add the file name and turn
it into their area's error (``BundleError`` when loading, ``ExportError`` when building).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Tuple

import numpy as np

Precision = Literal["fp32", "fp16", "int8"]
#: Names of ``trt.NetworkDefinitionCreationFlag`` members the builder ORs into ``create_network``.
NetworkFlag = Literal["EXPLICIT_BATCH", "STRONGLY_TYPED"]
#: Names of ``trt.BuilderFlag`` members the builder sets on its config.
BuilderFlagName = Literal["FP16", "INT8"]

#: The oldest TensorRT edgeseg runs: 8.5 (JetPack 5.1) is the first with the name-based tensor
#: API, the only one left in 10 and 11, so one code path serves every supported device.
MIN_VERSION: Final = (8, 5)
#: The batch of a batch-1 engine and the minimum of every batch profile: a batch-N engine is
#: built with the profile min 1 / opt N / max N (``batch_profile``), so that the same engine runs
#: one camera's frame or a full batch of N cameras' frames.
BATCH: Final = 1
#: How TensorRT marks a dimension that is only known once the input shapes are set.
DYNAMIC: Final = -1
#: Rank and axes of the image input (NCHW).
IMAGE_RANK: Final = 4
_BATCH_AXIS, _CHANNEL_AXIS = 0, 1
#: Execution contexts the runtime opens per engine by default (one per inference worker).
DEFAULT_CONTEXTS: Final = 2

# "8.6.2", "10.13.0.35", and suffixed pre-releases or local builds: "10.0.0b6", "8.6.1.post1".
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[.+-]?[A-Za-z][0-9A-Za-z.+-]*)?$")


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT release, ordered by (major, minor, patch, build), with what that release offers.

    Each capability is a property named after the API it guards, so that the code calling
    TensorRT reads ``if version.has_precision_flags:`` instead of a bare version comparison.
    """

    major: int
    minor: int
    patch: int = 0
    build: int = 0
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """``trt.__version__`` (or a manifest's builder version) as a TrtVersion."""
        m = _VERSION_RE.match(text.strip())
        if m is None:
            raise ValueError(f"TensorRT version {text!r}: expected major.minor[.patch[.build]], e.g. '10.3.0'")
        major, minor, patch, build = (int(g) if g else 0 for g in m.groups())
        return cls(major, minor, patch, build, text.strip())

    def at_least(self, major: int, minor: int = 0, patch: int = 0) -> bool:
        return (self.major, self.minor, self.patch) >= (major, minor, patch)

    def __str__(self) -> str:
        return self.text or f"{self.major}.{self.minor}.{self.patch}"

    @property
    def supported(self) -> bool:
        """edgeseg runs this release (it has the name-based tensor API)."""
        return self.has_name_based_io

    @property
    def has_name_based_io(self) -> bool:
        """``num_io_tensors``, ``get_tensor_name``, ``set_tensor_address`` and friends (8.5+)."""
        return self.at_least(8, 5)

    @property
    def has_execute_async_v3(self) -> bool:
        """``context.execute_async_v3(stream)`` with addresses set by name (8.5+)."""
        return self.at_least(8, 5)

    @property
    def has_bindings_api(self) -> bool:
        """``num_bindings`` / ``execute_async_v2`` (removed in 10.0)."""
        return not self.at_least(10)

    @property
    def needs_explicit_batch_flag(self) -> bool:
        """``create_network`` needs ``EXPLICIT_BATCH`` (before 10.0; ignored in 10, gone in 11)."""
        return not self.at_least(10)

    @property
    def has_precision_flags(self) -> bool:
        """``BuilderFlag.FP16`` / ``INT8`` exist (removed in 11.0: the ONNX types decide)."""
        return not self.at_least(11)

    @property
    def has_implicit_calibrators(self) -> bool:
        """``config.int8_calibrator`` exists (removed in 11.0). edgeseg never uses it."""
        return not self.at_least(11)

    @property
    def implicit_calibrators_deprecated(self) -> bool:
        return self.at_least(10, 1)

    @property
    def has_memory_pool_limit(self) -> bool:
        """``config.set_memory_pool_limit`` (8.4+; ``max_workspace_size`` is gone in 10)."""
        return self.at_least(8, 4)

    @property
    def has_hardware_compatibility_level(self) -> bool:
        """``config.hardware_compatibility_level`` and version-compatible plans (8.6+)."""
        return self.at_least(8, 6)

    @property
    def has_strongly_typed_flag(self) -> bool:
        """``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists (9.0+)."""
        return self.at_least(9)

    @property
    def prefers_strongly_typed(self) -> bool:
        """NVIDIA's migration guidance builds strongly typed networks from 10.12 on."""
        return self.at_least(10, 12)

    @property
    def always_strongly_typed(self) -> bool:
        """11.x networks are strongly typed whatever the flags say."""
        return self.at_least(11)

    @property
    def has_int64_tensors(self) -> bool:
        """INT64 I/O tensors (``trt.nptype`` maps int64 from 10.0)."""
        return self.at_least(10)

    @property
    def shares_profiles_between_contexts(self) -> bool:
        """Contexts of a dynamic-shape engine may share profile 0 (10.0+); before, one profile each."""
        return self.at_least(10)


def require_supported(version: TrtVersion) -> None:
    """Refuse releases without the name-based tensor API rather than keep a second code path."""
    if not version.supported:
        raise ValueError(
            f"TensorRT {version} is older than {MIN_VERSION[0]}.{MIN_VERSION[1]}, the oldest edgeseg supports "
            f"(the first with the name-based tensor API; JetPack 5.1 ships 8.5)"
        )


# --- data types ------------------------------------------------------------------------------

#: ``trt.DataType`` member names and the numpy types of their host buffers (as ``trt.nptype``).
NUMPY_DTYPES: Final[Mapping[str, np.dtype[Any]]] = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT64": np.dtype(np.int64),
}
#: TensorRT types that exist but have no numpy equivalent (``trt.nptype`` raises TypeError).
NO_NUMPY_DTYPE: Final = frozenset({"BF16", "FP8", "INT4", "FP4", "E8M0"})


def _member_name(name: str) -> str:
    """'DataType.FLOAT' (``str()`` of the enum), 'FLOAT' (``.name``) or 'float' -> 'FLOAT'."""
    return name.rsplit(".", 1)[-1].strip().upper()


def numpy_dtype(trt_type: str, version: TrtVersion | None = None) -> np.dtype[Any]:
    """The numpy type of a host buffer for a tensor of TensorRT type ``trt_type``."""
    name = _member_name(trt_type)
    if name in NO_NUMPY_DTYPE:
        raise ValueError(f"tensor type {name} has no numpy equivalent; export the model with float32 or float16 I/O")
    if name not in NUMPY_DTYPES:
        raise ValueError(f"unknown TensorRT tensor type {trt_type!r}; expected one of {sorted(NUMPY_DTYPES)}")
    if name == "INT64" and version is not None and not version.has_int64_tensors:
        raise ValueError(f"TensorRT {version} has no INT64 tensors (from 10.0)")
    return NUMPY_DTYPES[name]


# --- buffer plans ----------------------------------------------------------------------------

Shape = Tuple[int, ...]  # evaluated at import: typing's form for Python 3.8


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


@dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor as the engine describes it: ``-1`` where a dimension is dynamic."""

    name: str
    is_input: bool
    shape: Shape
    dtype: np.dtype[Any]

    @property
    def is_dynamic(self) -> bool:
        return any(d < 0 for d in self.shape)


@dataclass(frozen=True)
class ProfileShapes:
    """min / opt / max shapes of one input in one optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"profile shapes of different ranks: {self.min}, {self.opt}, {self.max}")
        if any(d < 1 for d in self.min) or not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise ValueError(f"profile shapes must be positive, min <= opt <= max: {self.min}, {self.opt}, {self.max}")

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(a <= d <= b for a, d, b in zip(self.min, shape, self.max))


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor with the concrete shape its buffers are allocated for."""

    name: str
    is_input: bool
    shape: Shape
    dtype: np.dtype[Any]
    #: A dynamic input: ``context.set_input_shape(name, shape)`` before the first execution.
    needs_input_shape: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


@dataclass(frozen=True)
class BufferPlan:
    """Every I/O tensor of an engine at one resolution, in the engine's order."""

    tensors: tuple[PlannedTensor, ...]

    @property
    def inputs(self) -> tuple[PlannedTensor, ...]:
        return tuple(t for t in self.tensors if t.is_input)

    @property
    def outputs(self) -> tuple[PlannedTensor, ...]:
        return tuple(t for t in self.tensors if not t.is_input)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def batch(self) -> int:
        """Frames the buffers hold: the first input's leading dimension (1 without inputs)."""
        inputs = self.inputs
        return inputs[0].shape[_BATCH_AXIS] if inputs and inputs[0].shape else BATCH


def _image_shape(spec: TensorSpec, resolution: tuple[int, int], batch: int = BATCH) -> Shape:
    """Fill the dynamic dims of an NCHW input from (batch, height, width); static dims must agree
    with the resolution (a static batch dimension is kept: it is what the engine runs)."""
    if len(spec.shape) != IMAGE_RANK:
        raise ValueError(
            f"input {spec.name!r} has dynamic shape {_shape_text(spec.shape)}; only NCHW image inputs "
            f"can be sized from a resolution"
        )
    if spec.shape[_CHANNEL_AXIS] < 0:
        raise ValueError(f"input {spec.name!r} has a dynamic channel count {_shape_text(spec.shape)}")
    frames = spec.shape[_BATCH_AXIS] if spec.shape[_BATCH_AXIS] > 0 else batch
    wanted = (frames, spec.shape[_CHANNEL_AXIS], *resolution)
    shape = tuple(w if d < 0 else d for d, w in zip(spec.shape, wanted))
    if shape != wanted:
        h, w = resolution
        raise ValueError(f"input {spec.name!r} is fixed at {_shape_text(spec.shape)}; requested {h}x{w} (h x w)")
    return shape


def _batch_of(spec: TensorSpec, profile: ProfileShapes | None, batch: int | None) -> int:
    """The batch to plan a dynamic input for: ``batch``, else the profile's largest, else 1."""
    if batch is not None:
        if batch < 1:
            raise ValueError(f"batch {batch}: expected at least 1")
        return batch
    if profile is not None and spec.shape and spec.shape[_BATCH_AXIS] < 0:
        return profile.max[_BATCH_AXIS]
    return BATCH


def input_shape(
    spec: TensorSpec,
    resolution: tuple[int, int] | None = None,
    profile: ProfileShapes | None = None,
    batch: int | None = None,
) -> Shape:
    """The concrete shape to run input ``spec`` at.

    ``resolution`` is (height, width), as ``ModelSpec.input_size``. A static input keeps its shape
    (a resolution that disagrees is an error, not silently ignored); a dynamic one takes the
    resolution, else the profile's opt shape, else fails naming the tensor, as TensorRT's
    ``common_runtime.py`` does, because ``trt.volume`` of a ``-1`` shape sizes nothing sensible.
    A dynamic batch dimension takes ``batch``, else the profile's maximum (the runtime sizes its
    buffers for the largest call and runs smaller batches in them), else 1.
    """
    if not spec.is_input:
        raise ValueError(f"tensor {spec.name!r} is an output, not an input")
    if resolution is not None and (len(resolution) != 2 or min(resolution) < 1):
        raise ValueError(f"resolution {resolution}: expected (height, width), both positive")
    if not spec.is_dynamic:
        return _image_shape(spec, resolution) if resolution is not None else spec.shape
    frames = _batch_of(spec, profile, batch)
    if resolution is not None:
        shape = _image_shape(spec, resolution, frames)
    elif profile is not None:
        shape = profile.opt
        if spec.shape[_BATCH_AXIS] < 0:
            shape = (frames, *shape[1:])
    elif all(d > 0 for d in spec.shape[1:]):  # only the batch is dynamic: nothing else to size
        shape = (frames, *spec.shape[1:])
    else:
        raise ValueError(
            f"input {spec.name!r} has dynamic shape {_shape_text(spec.shape)} and no input resolution or "
            f"optimisation profile was given"
        )
    if profile is not None and not profile.contains(shape):
        raise ValueError(
            f"input {spec.name!r}: shape {_shape_text(shape)} is outside the engine's profile "
            f"{_shape_text(profile.min)} .. {_shape_text(profile.max)}"
        )
    return shape


def batch_profile(spec: TensorSpec, resolution: tuple[int, int] | None, max_batch: int = BATCH) -> ProfileShapes:
    """The build profile of an image input: batch min 1 / opt ``max_batch`` / max ``max_batch``, one
    resolution (height and width min = opt = max: TensorRT tunes for exactly the size it runs).

    The opt batch is the full one because a batched engine earns its keep when the cameras fill
    it; a partial batch still runs, on kernels tuned for the full one. A batch of 1 gives the
    static profile of a batch-1 engine. ``max_batch`` above 1 needs a symbolic batch dimension.
    """
    if max_batch < 1:
        raise ValueError(f"batch {max_batch}: expected at least 1")
    if max_batch > BATCH and spec.shape and spec.shape[_BATCH_AXIS] >= 0:
        raise ValueError(
            f"input {spec.name!r} has a static batch of {spec.shape[_BATCH_AXIS]} {_shape_text(spec.shape)}; a "
            f"batch-{max_batch} engine needs an ONNX whose batch dimension is symbolic (export --batch "
            f"{max_batch}, or python -m export.rebatch)"
        )
    high = input_shape(spec, resolution, batch=max_batch)
    low = (BATCH, *high[1:]) if spec.shape[_BATCH_AXIS] < 0 else high
    return ProfileShapes(low, high, high)


def static_profile(spec: TensorSpec, resolution: tuple[int, int] | None) -> ProfileShapes:
    """min = opt = max for a one-resolution batch-1 build: TensorRT tunes for exactly the shape it runs."""
    return batch_profile(spec, resolution, BATCH)


def build_profiles(
    specs: Sequence[TensorSpec], resolution: tuple[int, int] | None, max_batch: int = BATCH
) -> dict[str, ProfileShapes]:
    """The profile of every dynamic input for a build of ``max_batch`` frames at ``resolution``.

    A static ONNX needs none, unless a batch above 1 is asked for, which it cannot give: refused.
    """
    shapes = {}
    for spec in specs:
        if spec.is_dynamic or max_batch > BATCH:  # a static input and a batch above 1: refused
            shapes[spec.name] = batch_profile(spec, resolution, max_batch)
    return shapes


def batch_range(spec: TensorSpec, profile: ProfileShapes | None) -> tuple[int, int]:
    """(fewest, most) frames one call of an engine with image input ``spec`` runs.

    A static batch runs exactly that many; a dynamic one what its profile allows (1..1 with no
    profile, which TensorRT would not build anyway).
    """
    if not spec.shape:
        return BATCH, BATCH
    if spec.shape[_BATCH_AXIS] > 0:
        return spec.shape[_BATCH_AXIS], spec.shape[_BATCH_AXIS]
    if profile is None:
        return BATCH, BATCH
    return profile.min[_BATCH_AXIS], profile.max[_BATCH_AXIS]


def call_batch(planned: Sequence[int], shape: Sequence[int], low: int, high: int) -> int:
    """The number of frames in an input of ``shape`` for an engine planned at ``planned`` that runs
    ``low``..``high`` frames per call; ValueError when the engine cannot run it."""
    rest = tuple(planned[1:])
    if len(shape) != len(planned) or tuple(shape[1:]) != rest or not low <= shape[0] <= high:
        frames = str(low) if low == high else f"{low}..{high}"
        raise ValueError(f"input shape {_shape_text(shape)}, engine runs ({frames}, "
                         f"{', '.join(str(d) for d in rest)})")
    return int(shape[0])


def plan_buffers(
    specs: Sequence[TensorSpec],
    resolution: tuple[int, int] | None = None,
    profiles: Mapping[str, ProfileShapes] | None = None,
    resolved: Mapping[str, Sequence[int]] | None = None,
) -> BufferPlan:
    """Concrete shapes and byte sizes for every tensor of an engine.

    A dynamic batch dimension is planned at the profile's maximum: buffers hold the largest call,
    and a smaller batch uses their leading part (``BufferPlan.batch``; every output must then
    lead with the batch, or no frame's slice could be cut from it).

    Args:
        specs: the engine's I/O tensors in its order.
        resolution: (height, width) for dynamic image inputs.
        profiles: input name -> profile shapes of the profile the context uses.
        resolved: output name -> ``context.get_tensor_shape(name)`` after the input shapes were
            set. Only TensorRT knows how output shapes follow input shapes, so the runtime asks it
            (sizing from the engine's ``-1`` shapes would be wrong, see docs/tensorrt.md, "Running").
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate tensor names in {names}")
    profiles = profiles or {}
    resolved = resolved or {}
    planned = []
    for spec in specs:
        if spec.is_input:
            shape = input_shape(spec, resolution, profiles.get(spec.name))
        elif not spec.is_dynamic:
            shape = spec.shape
        elif spec.name not in resolved:
            raise ValueError(
                f"output {spec.name!r} has dynamic shape {_shape_text(spec.shape)}; its size is known only "
                f"after the input shapes are set"
            )
        else:
            shape = tuple(int(d) for d in resolved[spec.name])
            if any(d < 0 for d in shape):
                raise ValueError(
                    f"output {spec.name!r} has a data-dependent shape {_shape_text(shape)}; edgeseg needs "
                    f"outputs whose size follows from the input size"
                )
        planned.append(PlannedTensor(spec.name, spec.is_input, shape, spec.dtype, spec.is_input and spec.is_dynamic))
    plan = BufferPlan(tuple(planned))
    frames = plan.batch
    if frames > BATCH:
        for t in plan.outputs:
            if not t.shape or t.shape[_BATCH_AXIS] != frames:
                raise ValueError(
                    f"output {t.name!r} has shape {_shape_text(t.shape)} at a batch of {frames}; a batched "
                    f"engine's outputs must lead with the batch (one slice per frame)"
                )
    return plan


def context_count(version: TrtVersion, dynamic_inputs: bool, profiles: int, requested: int) -> int:
    """How many execution contexts an engine can run at once.

    Before 10.0 each context of a dynamic-shape engine needs an optimisation profile of its own,
    so the builder adds one identical profile per context (``BuildDecisions.profiles``) and the
    runtime opens no more contexts than there are profiles. Static engines and 10.0+ share.
    """
    if requested < 1:
        raise ValueError(f"contexts {requested}: expected at least 1")
    if dynamic_inputs and not version.shares_profiles_between_contexts:
        return max(1, min(requested, profiles))
    return requested


def profile_index(version: TrtVersion, dynamic_inputs: bool, context: int) -> int:
    """The profile context number ``context`` selects (0 wherever profiles are shared)."""
    return context if dynamic_inputs and not version.shares_profiles_between_contexts else 0


# --- builder decisions -----------------------------------------------------------------------

#: ONNX Q/DQ nodes parse into these layers.
QDQ_LAYERS: Final = frozenset({"QUANTIZE", "DEQUANTIZE"})
#: Tensor types that mark an FP16 (or mixed) ONNX: FP16 initializers, Cast to float16.
FP16_TYPES: Final = frozenset({"HALF"})
#: The builder flag each precision sets on releases that still have precision flags (< 11).
PRECISION_FLAGS: Final[Mapping[Precision, tuple[BuilderFlagName, ...]]] = {
    "fp32": (),
    "fp16": ("FP16",),
    "int8": ("INT8",),
}


def parse_precision(text: str) -> Precision:
    """``text`` as a Precision, or ValueError listing the choices."""
    for precision in PRECISION_FLAGS:
        if text == precision:
            return precision
    raise ValueError(f"precision {text!r}: expected one of {', '.join(PRECISION_FLAGS)}")


@dataclass(frozen=True)
class NetworkTraits:
    """What the parsed ONNX computes in: decided from its layers, not from the file name."""

    has_qdq: bool
    has_fp16: bool


def network_traits(layer_types: Iterable[str], tensor_types: Iterable[str]) -> NetworkTraits:
    """Traits from the parsed network's layer type names and layer output type names."""
    layers = {_member_name(t) for t in layer_types}
    types = {_member_name(t) for t in tensor_types}
    return NetworkTraits(has_qdq=bool(layers & QDQ_LAYERS), has_fp16=bool(types & FP16_TYPES))


@dataclass(frozen=True)
class BuildDecisions:
    """What ``edgeseg.backends.trt_build`` sets for one precision on one TensorRT release.

    Attributes:
        network_flags: creation flags to OR into ``builder.create_network``.
        builder_flags: ``config.set_flag`` calls.
        strongly_typed: the network's ONNX types decide every layer's precision (explicit
            ``STRONGLY_TYPED`` on 10.12+ for Q/DQ INT8, always on 11.x).
        requires_qdq: the ONNX must hold Q/DQ nodes. Always so for int8: edgeseg never uses
            implicit calibrators (deprecated in 10.1, removed in 11), so INT8 scales come from the
            export's quantise step and the same Q/DQ file builds on every release.
        requires_fp16_onnx: the ONNX itself must compute in FP16 (11.x has no FP16 flag).
        profiles: identical static profiles to add when an input is dynamic (one per execution
            context before 10.0, see ``context_count``).
    """

    version: TrtVersion
    precision: Precision
    network_flags: tuple[NetworkFlag, ...]
    builder_flags: tuple[BuilderFlagName, ...]
    strongly_typed: bool
    requires_qdq: bool
    requires_fp16_onnx: bool
    profiles: int


def build_decisions(version: TrtVersion, precision: str, contexts: int = DEFAULT_CONTEXTS) -> BuildDecisions:
    """Flags and requirements for building ``precision`` with TensorRT ``version``.

    - fp32: no precision flags (TF32 stays TensorRT's default on Ampere and later).
    - fp16: ``BuilderFlag.FP16`` before 11; on 11 only an FP16/mixed ONNX gives an FP16 engine.
    - int8: from a Q/DQ ONNX only. 10.12+ builds it strongly typed without flags, the path NVIDIA
      documents (flags would conflict); earlier releases need ``BuilderFlag.INT8``. No FP16 flag
      beside it: layers outside Q/DQ pairs stay FP32 on every release, so an int8 engine computes
      the same on JetPack 5.1 as on a strongly typed desktop build.
    """
    require_supported(version)
    prec = parse_precision(precision)
    if contexts < 1:
        raise ValueError(f"contexts {contexts}: expected at least 1")
    network: list[NetworkFlag] = ["EXPLICIT_BATCH"] if version.needs_explicit_batch_flag else []
    flags: tuple[BuilderFlagName, ...] = ()
    strongly_typed = version.always_strongly_typed
    if prec == "int8" and version.prefers_strongly_typed and not version.always_strongly_typed:
        network.append("STRONGLY_TYPED")
        strongly_typed = True
    if version.has_precision_flags and not strongly_typed:
        flags = PRECISION_FLAGS[prec]
    return BuildDecisions(
        version=version,
        precision=prec,
        network_flags=tuple(network),
        builder_flags=flags,
        strongly_typed=strongly_typed,
        requires_qdq=prec == "int8",
        requires_fp16_onnx=prec == "fp16" and not version.has_precision_flags,
        profiles=1 if version.shares_profiles_between_contexts else contexts,
    )


def network_problem(decisions: BuildDecisions, traits: NetworkTraits) -> str | None:
    """Why the parsed ONNX cannot be built as ``decisions.precision``, or None when it can."""
    p, v = decisions.precision, decisions.version
    if decisions.requires_qdq and not traits.has_qdq:
        return (
            "int8 needs a Q/DQ ONNX (QuantizeLinear/DequantizeLinear from the export's quantise step); "
            "edgeseg does not use implicit calibrators (deprecated in TensorRT 10.1, removed in 11)"
        )
    if not decisions.requires_qdq and traits.has_qdq:
        return f"the ONNX holds Q/DQ nodes, so it builds an INT8 engine: ask for int8, not {p}"
    if decisions.requires_fp16_onnx and not traits.has_fp16:
        return (
            f"TensorRT {v} has no BuilderFlag.FP16 (removed in 11.0): fp16 needs an FP16 or mixed ONNX "
            f"(FP16 initializers, Cast nodes); this one computes in FP32"
        )
    if p == "fp32" and decisions.strongly_typed and traits.has_fp16:
        return f"the ONNX computes in FP16 and TensorRT {v} builds it as typed: ask for fp16, not fp32"
    return None
