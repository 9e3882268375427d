"""TensorRT decisions that need no GPU: versions, dtypes, buffer plans, profiles, builder flags."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from edgeseg.backends.trt_plan import (
    BATCH,
    ProfileShapes,
    TensorSpec,
    TrtVersion,
    build_decisions,
    context_count,
    input_shape,
    network_problem,
    network_traits,
    numpy_dtype,
    parse_precision,
    plan_buffers,
    profile_index,
    require_supported,
    static_profile,
)

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)

V85, V86, V103, V1013, V111 = (TrtVersion.parse(t) for t in ("8.5.2.2", "8.6.2", "10.3.0", "10.13.0.35", "11.1.0"))

# --- versions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.5.2.2", (8, 5, 2, 2)),
        ("8.6.2", (8, 6, 2, 0)),
        ("10.3.0", (10, 3, 0, 0)),
        ("10.13.0.35", (10, 13, 0, 35)),
        ("11.1.0", (11, 1, 0, 0)),
        (" 10.3.0\n", (10, 3, 0, 0)),
        ("10.0.0b6", (10, 0, 0, 0)),
        ("8.6.1.post1", (8, 6, 1, 0)),
        ("10.3", (10, 3, 0, 0)),
    ],
)
def test_version_parse(text: str, expected: tuple[int, int, int, int]) -> None:
    v = TrtVersion.parse(text)
    assert (v.major, v.minor, v.patch, v.build) == expected
    assert str(v) == text.strip()


@pytest.mark.parametrize("text", ["", "ten", "10", "10.x.0", "v10.3.0", "10.3.0.35.1"])
def test_version_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="TensorRT version"):
        TrtVersion.parse(text)


def test_versions_order_numerically_not_as_text() -> None:
    assert V85 < V86 < V103 < V1013 < V111
    assert TrtVersion.parse("10.13.0.35") > TrtVersion.parse("10.3.0.26")
    assert TrtVersion.parse("10.3.0") == TrtVersion(10, 3)  # the text is not compared


CAPABILITIES = [
    "has_name_based_io",
    "has_execute_async_v3",
    "has_bindings_api",
    "needs_explicit_batch_flag",
    "has_precision_flags",
    "has_implicit_calibrators",
    "implicit_calibrators_deprecated",
    "has_memory_pool_limit",
    "has_hardware_compatibility_level",
    "has_strongly_typed_flag",
    "prefers_strongly_typed",
    "always_strongly_typed",
    "has_int64_tensors",
    "shares_profiles_between_contexts",
]
# One row per release, values in CAPABILITIES order (docs/tensorrt.md, "Versions and what each release offers").
CAPABILITY_TABLE = {
    #            name  v3    bind  EXPB  prec  calib dep.  pool  hwc   ST    pref  ST11  i64   share
    "8.4.3": (False, False, True, True, True, True, False, True, False, False, False, False, False, False),
    "8.5.2.2": (True, True, True, True, True, True, False, True, False, False, False, False, False, False),
    "8.6.2": (True, True, True, True, True, True, False, True, True, False, False, False, False, False),
    "10.0.1": (True, True, False, False, True, True, False, True, True, True, False, False, True, True),
    "10.3.0": (True, True, False, False, True, True, True, True, True, True, False, False, True, True),
    "10.13.0.35": (True, True, False, False, True, True, True, True, True, True, True, False, True, True),
    "11.1.0": (True, True, False, False, False, False, True, True, True, True, True, True, True, True),
}


@pytest.mark.parametrize(("text", "row"), CAPABILITY_TABLE.items())
def test_capabilities_per_version(text: str, row: tuple[bool, ...]) -> None:
    v = TrtVersion.parse(text)
    assert {c: getattr(v, c) for c in CAPABILITIES} == dict(zip(CAPABILITIES, row))


def test_releases_before_8_5_are_refused() -> None:
    require_supported(V85)
    with pytest.raises(ValueError, match=r"8\.4\.3 is older than 8\.5.*name-based"):
        require_supported(TrtVersion.parse("8.4.3"))


# --- data types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("FLOAT", None, np.float32),
        ("DataType.FLOAT", V85, np.float32),
        ("HALF", V85, np.float16),
        ("INT8", V86, np.int8),
        ("INT32", V103, np.int32),
        ("BOOL", V103, np.bool_),
        ("UINT8", V103, np.uint8),
        ("INT64", V103, np.int64),
        ("int64", None, np.int64),
    ],
)
def test_numpy_dtype(name: str, version: TrtVersion | None, expected: type) -> None:
    assert numpy_dtype(name, version) == np.dtype(expected)


@pytest.mark.parametrize(
    ("name", "version", "match"),
    [
        ("BF16", V1013, "no numpy equivalent"),
        ("DataType.FP8", V1013, "no numpy equivalent"),
        ("INT4", V111, "no numpy equivalent"),
        ("FP4", V111, "no numpy equivalent"),
        ("INT64", V86, "no INT64 tensors"),
        ("COMPLEX", None, "unknown TensorRT tensor type"),
    ],
)
def test_numpy_dtype_rejects(name: str, version: TrtVersion | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        numpy_dtype(name, version)


# --- buffer plans ----------------------------------------------------------------------------

STATIC_IN = TensorSpec("images", True, (1, 3, 640, 640), F32)
STATIC_PRED = TensorSpec("output0", False, (1, 116, 8400), F32)
STATIC_PROTO = TensorSpec("output1", False, (1, 32, 160, 160), F32)
DYN_IN = TensorSpec("images", True, (-1, 3, -1, -1), F32)
DYN_PRED = TensorSpec("output0", False, (-1, 116, -1), F32)
DYN_PROTO = TensorSpec("output1", False, (-1, 32, -1, -1), F32)
PROFILE_320_640 = ProfileShapes((1, 3, 320, 320), (1, 3, 640, 640), (1, 3, 640, 640))


def test_static_plan_sizes_every_tensor() -> None:
    plan = plan_buffers([STATIC_IN, STATIC_PRED, STATIC_PROTO])
    assert [t.name for t in plan.tensors] == ["images", "output0", "output1"]
    assert [t.name for t in plan.inputs] == ["images"] and [t.name for t in plan.outputs] == ["output0", "output1"]
    assert [t.nbytes for t in plan.tensors] == [3 * 640 * 640 * 4, 116 * 8400 * 4, 32 * 160 * 160 * 4]
    assert plan.nbytes == sum(t.nbytes for t in plan.tensors)
    assert not any(t.needs_input_shape for t in plan.tensors)


def test_static_plan_accepts_its_own_resolution() -> None:
    plan = plan_buffers([STATIC_IN, STATIC_PRED], resolution=(640, 640))
    assert plan.inputs[0].shape == (1, 3, 640, 640)


def test_dynamic_plan_with_resolution_and_resolved_outputs() -> None:
    resolved = {"output0": (1, 116, 2100), "output1": (1, 32, 80, 80)}
    plan = plan_buffers([DYN_IN, DYN_PRED, DYN_PROTO], resolution=(320, 320), resolved=resolved)
    assert [t.shape for t in plan.tensors] == [(BATCH, 3, 320, 320), (1, 116, 2100), (1, 32, 80, 80)]
    assert [t.needs_input_shape for t in plan.tensors] == [True, False, False]
    assert plan.inputs[0].nbytes == 3 * 320 * 320 * 4


def test_fp16_tensors_are_sized_by_their_own_type() -> None:
    plan = plan_buffers([TensorSpec("images", True, (1, 3, 64, 64), F16)])
    assert plan.inputs[0].nbytes == 3 * 64 * 64 * 2


@pytest.mark.parametrize(
    ("specs", "resolution", "profiles", "resolved", "match"),
    [
        # The common_runtime.py rule: a dynamic input with nothing to size it names the tensor.
        ([DYN_IN, STATIC_PRED], None, None, None, r"input 'images' has dynamic shape \(-1, 3, -1, -1\) and no input"),
        ([DYN_IN, DYN_PRED], (320, 320), None, None, r"output 'output0' has dynamic shape .* after the input shapes"),
        ([DYN_IN, DYN_PRED], (320, 320), None, {"output0": (1, 116, -1)}, "data-dependent shape"),
        ([STATIC_IN, STATIC_PRED], (320, 320), None, None, r"fixed at \(1, 3, 640, 640\); requested 320x320"),
        ([DYN_IN], (1280, 1280), {"images": PROFILE_320_640}, None, "outside the engine's profile"),
        ([TensorSpec("images", True, (-1, -1, -1, -1), F32)], (320, 320), None, None, "dynamic channel count"),
        ([TensorSpec("ids", True, (-1, 16), F32)], (320, 320), None, None, "only NCHW image inputs"),
        ([DYN_IN], (0, 320), None, None, "both positive"),
        ([STATIC_IN, STATIC_IN], None, None, None, "duplicate tensor names"),
    ],
)
def test_plan_errors(
    specs: list[TensorSpec],
    resolution: tuple[int, int] | None,
    profiles: dict[str, ProfileShapes] | None,
    resolved: dict[str, tuple[int, ...]] | None,
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        plan_buffers(specs, resolution, profiles, resolved)


def test_dynamic_input_without_resolution_takes_the_profile_opt_shape() -> None:
    assert input_shape(DYN_IN, None, PROFILE_320_640) == (1, 3, 640, 640)
    assert input_shape(DYN_IN, (320, 320), PROFILE_320_640) == (1, 3, 320, 320)


def test_partly_dynamic_input_keeps_its_static_dims() -> None:
    spec = TensorSpec("images", True, (1, 3, -1, 640), F32)
    assert input_shape(spec, (480, 640)) == (1, 3, 480, 640)
    with pytest.raises(ValueError, match="fixed at"):
        input_shape(spec, (480, 480))


# --- profiles --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "resolution", "expected"),
    [
        (DYN_IN, (320, 320), (1, 3, 320, 320)),
        (DYN_IN, (384, 640), (1, 3, 384, 640)),
        (STATIC_IN, None, (1, 3, 640, 640)),
        (TensorSpec("images", True, (1, 3, -1, -1), F32), (512, 512), (1, 3, 512, 512)),
    ],
)
def test_static_profile_is_min_opt_max_of_one_shape(
    spec: TensorSpec, resolution: tuple[int, int] | None, expected: tuple[int, ...]
) -> None:
    assert static_profile(spec, resolution) == ProfileShapes(expected, expected, expected)


def test_static_profile_of_a_dynamic_input_needs_a_resolution() -> None:
    with pytest.raises(ValueError, match="'images' has dynamic shape"):
        static_profile(DYN_IN, None)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((1, 3, 640, 640), (1, 3, 320, 320), (1, 3, 640, 640)), "min <= opt <= max"),
        (((1, 3, 0, 0), (1, 3, 320, 320), (1, 3, 640, 640)), "positive"),
        (((1, 3, 320), (1, 3, 320, 320), (1, 3, 640, 640)), "different ranks"),
    ],
)
def test_profile_shapes_are_validated(shapes: tuple[tuple[int, ...], ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProfileShapes(*shapes)


@pytest.mark.parametrize(
    ("version", "dynamic", "profiles", "requested", "count", "second_profile"),
    [
        (V85, False, 1, 4, 4, 0),  # static engines share the default profile on every release
        (V85, True, 1, 2, 1, 1),  # 8.x dynamic: one profile per context
        (V86, True, 2, 2, 2, 1),
        (V86, True, 2, 3, 2, 1),
        (V103, True, 1, 3, 3, 0),  # 10.0+ shares profiles between contexts
        (V111, True, 1, 2, 2, 0),
    ],
)
def test_context_count_and_profile_index(
    version: TrtVersion, dynamic: bool, profiles: int, requested: int, count: int, second_profile: int
) -> None:
    assert context_count(version, dynamic, profiles, requested) == count
    assert profile_index(version, dynamic, 0) == 0
    assert profile_index(version, dynamic, 1) == second_profile


# --- builder decisions -----------------------------------------------------------------------

# (version, precision) -> (network flags, builder flags, strongly typed, requires Q/DQ, requires FP16 ONNX, profiles)
DECISIONS: list[tuple[TrtVersion, str, tuple[Any, ...]]] = [
    (V85, "fp32", (("EXPLICIT_BATCH",), (), False, False, False, 2)),
    (V85, "fp16", (("EXPLICIT_BATCH",), ("FP16",), False, False, False, 2)),
    (V85, "int8", (("EXPLICIT_BATCH",), ("INT8",), False, True, False, 2)),
    (V86, "fp16", (("EXPLICIT_BATCH",), ("FP16",), False, False, False, 2)),
    (V86, "int8", (("EXPLICIT_BATCH",), ("INT8",), False, True, False, 2)),
    (V103, "fp32", ((), (), False, False, False, 1)),
    (V103, "fp16", ((), ("FP16",), False, False, False, 1)),
    (V103, "int8", ((), ("INT8",), False, True, False, 1)),
    (V1013, "fp16", ((), ("FP16",), False, False, False, 1)),
    (V1013, "int8", (("STRONGLY_TYPED",), (), True, True, False, 1)),  # NVIDIA's 10.12+ path; flags would conflict
    (V111, "fp32", ((), (), True, False, False, 1)),
    (V111, "fp16", ((), (), True, False, True, 1)),  # no FP16 flag in 11: the ONNX must be FP16
    (V111, "int8", ((), (), True, True, False, 1)),
]


@pytest.mark.parametrize(("version", "precision", "expected"), DECISIONS)
def test_build_decisions(version: TrtVersion, precision: str, expected: tuple[Any, ...]) -> None:
    d = build_decisions(version, precision)
    assert (d.network_flags, d.builder_flags, d.strongly_typed, d.requires_qdq, d.requires_fp16_onnx,
            d.profiles) == expected
    assert d.precision == precision and d.version == version


@pytest.mark.parametrize(("version", "precision", "_expected"), DECISIONS)
def test_int8_never_uses_an_implicit_calibrator(version: TrtVersion, precision: str, _expected: object) -> None:
    d = build_decisions(version, precision)
    assert d.requires_qdq == (precision == "int8")
    assert "INT8" not in d.builder_flags or not d.strongly_typed


@pytest.mark.parametrize(
    ("version", "precision", "match"),
    [
        (TrtVersion.parse("8.4.3"), "fp16", "older than 8.5"),
        (V103, "bf16", "expected one of fp32, fp16, int8"),
        (V103, "FP16", "expected one of"),
    ],
)
def test_build_decisions_refuse(version: TrtVersion, precision: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_decisions(version, precision)


def test_parse_precision() -> None:
    assert [parse_precision(p) for p in ("fp32", "fp16", "int8")] == ["fp32", "fp16", "int8"]


def test_profiles_follow_the_requested_contexts_before_10() -> None:
    assert build_decisions(V86, "fp16", contexts=3).profiles == 3
    assert build_decisions(V103, "fp16", contexts=3).profiles == 1


@pytest.mark.parametrize(
    ("layers", "types", "qdq", "fp16"),
    [
        (["CONVOLUTION", "ACTIVATION"], ["FLOAT", "FLOAT"], False, False),
        (["LayerType.QUANTIZE", "LayerType.DEQUANTIZE", "CONVOLUTION"], ["INT8", "FLOAT"], True, False),
        (["CAST", "CONVOLUTION"], ["DataType.HALF", "FLOAT"], False, True),
        ([], [], False, False),
    ],
)
def test_network_traits(layers: list[str], types: list[str], qdq: bool, fp16: bool) -> None:
    assert network_traits(layers, types) == network_traits(iter(layers), iter(types))
    t = network_traits(layers, types)
    assert (t.has_qdq, t.has_fp16) == (qdq, fp16)


FP32_ONNX = network_traits(["CONVOLUTION"], ["FLOAT"])
FP16_ONNX = network_traits(["CAST", "CONVOLUTION"], ["HALF"])
QDQ_ONNX = network_traits(["QUANTIZE", "DEQUANTIZE"], ["INT8", "FLOAT"])


@pytest.mark.parametrize(
    ("version", "precision", "traits", "match"),
    [
        (V85, "fp32", FP32_ONNX, None),
        (V85, "fp16", FP32_ONNX, None),
        (V85, "int8", QDQ_ONNX, None),
        (V103, "int8", FP32_ONNX, "needs a Q/DQ ONNX"),
        (V1013, "int8", QDQ_ONNX, None),
        (V103, "fp16", QDQ_ONNX, "ask for int8, not fp16"),
        (V111, "fp16", FP32_ONNX, r"no BuilderFlag\.FP16 \(removed in 11\.0\)"),  # 11.x refuses fp16-by-flag
        (V111, "fp16", FP16_ONNX, None),
        (V111, "fp32", FP16_ONNX, "ask for fp16, not fp32"),
        (V111, "int8", QDQ_ONNX, None),
        (V111, "int8", FP16_ONNX, "needs a Q/DQ ONNX"),
    ],
)
def test_network_problem(version: TrtVersion, precision: str, traits: Any, match: str | None) -> None:
    problem = network_problem(build_decisions(version, precision), traits)
    if match is None:
        assert problem is None
    else:
        assert problem is not None and re.search(match, problem), problem
