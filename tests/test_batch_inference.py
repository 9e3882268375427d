"""Batched inference: ``Backend.max_batch`` / ``infer_batch`` on every backend, the TensorRT batch
profile's bookkeeping, ``ModelSpec.max_batch`` and the manifest's ``max_batch``.

The central property: a batch of different frames through ``infer_batch`` and the unchanged
per-frame decoder gives exactly the instances of the same frames run one at a time. It is checked
on the demo model (rebatched here by ``export.rebatch``, which needs Python 3.11+: skipped below)
and on the real yolov8n-seg dynamic model (``realdata``).

Runs on Python 3.8: nothing from the export stage is imported at module level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest
from conftest import DEMO_BUNDLE
from trt_fakes import FakeBuilderTrt, FakeCuda, FakeTrt, install_builder, install_runtime

from edgeseg.backends import tensorrt as trt_backend
from edgeseg.backends import trt_plan
from edgeseg.backends.base import Backend, NetworkInfo, TensorInfo, split_frames
from edgeseg.backends.tensorrt import TensorRTBackend
from edgeseg.backends.trt_build import build_engine
from edgeseg.bundle.manifest import EngineRecord, load_manifest, parse_manifest
from edgeseg.decode.prototype import decode_prototype_outputs
from edgeseg.errors import BundleError, ExportError, ModelError
from edgeseg.model import Model, load_model, spec_from_network
from edgeseg.postprocess import Postprocessor
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.preprocess import Preprocessor
from edgeseg.structures import Instances

F32 = np.dtype(np.float32)


# --- the base class: one call, a loop, or padding ----------------------------------------------


class RecordingBackend(Backend):
    """Outputs every frame's mean in a (n, 2, 4) "pred" and a (n, 1, 2, 2) "proto"; records calls."""

    def __init__(self, batch: Any) -> None:
        self.calls: List[Tuple[int, ...]] = []
        self.info = NetworkInfo(
            path="/models/recording.onnx",
            inputs=(TensorInfo("images", (batch, 3, 8, 8), "tensor(float)"),),
            outputs=(TensorInfo("pred", (batch, 2, 4), "tensor(float)"),
                     TensorInfo("proto", (batch, 1, 2, 2), "tensor(float)")),
        )

    def infer(self, inputs: np.ndarray) -> List[np.ndarray]:
        fixed = self.info.inputs[0].shape[0]
        if isinstance(fixed, int):
            assert inputs.shape[0] == fixed, f"a static batch-{fixed} network called with {inputs.shape[0]}"
        self.calls.append(tuple(inputs.shape))
        means = inputs.reshape(inputs.shape[0], -1).mean(axis=1).astype(np.float32)
        return [np.broadcast_to(means[:, None, None], (len(means), 2, 4)).copy(),
                np.broadcast_to(means[:, None, None, None], (len(means), 1, 2, 2)).copy()]


def _frames(*values: float) -> np.ndarray:
    return np.stack([np.full((3, 8, 8), v, np.float32) for v in values])


def _assert_frames(results: Sequence[Sequence[np.ndarray]], values: Sequence[float]) -> None:
    assert len(results) == len(values)
    for outputs, value in zip(results, values):
        assert [o.shape for o in outputs] == [(1, 2, 4), (1, 1, 2, 2)]
        assert all(np.all(o == value) for o in outputs)


@pytest.mark.parametrize(
    ("batch", "max_batch", "calls"),
    [
        (1, 1, [(1, 3, 8, 8)] * 3),  # a batch-1 network: one call per frame
        ("batch", None, [(3, 3, 8, 8)]),  # symbolic: one call for the batch, no limit known
        (None, None, [(3, 3, 8, 8)]),
        (4, 4, [(4, 3, 8, 8)]),  # static batch 4: padded with a blank frame, its outputs dropped
        (3, 3, [(3, 3, 8, 8)]),
    ],
)
def test_infer_batch_calls_the_network_as_its_batch_allows(batch: Any, max_batch: Optional[int],
                                                           calls: List[Tuple[int, ...]]) -> None:
    backend = RecordingBackend(batch)
    assert backend.max_batch == max_batch
    _assert_frames(backend.infer_batch(_frames(1.0, 2.0, 3.0)), [1.0, 2.0, 3.0])
    assert backend.calls == calls


def test_frames_outputs_stay_valid_after_later_calls() -> None:
    backend = RecordingBackend("batch")
    first = backend.infer_batch(_frames(1.0, 2.0))
    backend.infer_batch(_frames(7.0, 8.0))
    _assert_frames(first, [1.0, 2.0])


@pytest.mark.parametrize(("batch", "n"), [(4, 5), (2, 8)])
def test_a_batch_over_the_maximum_is_one_line_naming_model_and_max(batch: int, n: int) -> None:
    backend = RecordingBackend(batch)
    with pytest.raises(ModelError) as err:
        backend.infer_batch(_frames(*range(n)))
    text = str(err.value)
    assert "\n" not in text and "/models/recording.onnx" in text and f"maximum batch of {batch}" in text
    assert backend.calls == []


def test_infer_batch_refuses_what_is_not_a_batch_of_images() -> None:
    with pytest.raises(ModelError, match=r"\(n, 3, H, W\)"):
        RecordingBackend("batch").infer_batch(np.zeros((3, 8, 8), np.float32))


def test_split_frames_refuses_outputs_without_the_batch() -> None:
    with pytest.raises(ModelError, match="does not lead with the batch of 3 frames"):
        split_frames([np.zeros((3, 2)), np.zeros((1, 2))], 3, "m.onnx")


def test_spec_mirrors_the_network_batch() -> None:
    def info(batch: Any) -> NetworkInfo:
        return NetworkInfo("m.onnx", (TensorInfo("images", (batch, 3, 320, 320), "f"),),
                           (TensorInfo("p", (batch, 4 + 2 + 4, 2100), "f"), TensorInfo("q", (batch, 4, 80, 80), "f")))

    assert spec_from_network(info(1), "m").max_batch == 1
    assert spec_from_network(info(4), "m").max_batch == 4
    assert spec_from_network(info("batch"), "m").max_batch is None


# --- the manifest ------------------------------------------------------------------------------


def test_old_manifests_read_as_batch_1_and_stay_byte_identical() -> None:
    manifest = load_manifest(DEMO_BUNDLE)
    assert {e.max_batch for e in manifest.engines} == {1}
    assert manifest.to_json() == (DEMO_BUNDLE / "manifest.json").read_text("utf-8")


def test_a_batch_engine_record_round_trips() -> None:
    manifest = load_manifest(DEMO_BUNDLE)
    engines = [e.model_copy(update={"max_batch": 8}) for e in manifest.engines]
    text = manifest.model_copy(update={"engines": engines}).to_json()
    assert json.loads(text)["engines"][0]["max_batch"] == 8
    assert [e.max_batch for e in parse_manifest(text, "m").engines] == [8] * len(engines)


@pytest.mark.parametrize("value", [0, 33, "four"])
def test_a_bad_engine_batch_is_one_line(value: Any) -> None:
    doc = json.loads((DEMO_BUNDLE / "manifest.json").read_text("utf-8"))
    doc["engines"][0]["max_batch"] = value
    with pytest.raises(BundleError, match="max_batch") as err:
        parse_manifest(json.dumps(doc), "manifest.json")
    assert "\n" not in str(err.value)


def test_demo_bundle_reports_batch_1() -> None:
    model = load_model(DEMO_BUNDLE, threads=1)
    try:
        assert model.spec.max_batch == model.backend.max_batch == 1
        frames = np.random.default_rng(0).random((2, 3, 320, 320), dtype=np.float32)
        batched = model.backend.infer_batch(frames)  # a batch-1 network: one call per frame
        for k in range(2):
            for a, b in zip(batched[k], model.backend.infer(frames[k : k + 1])):
                np.testing.assert_array_equal(a, b)
    finally:
        model.close()


# --- batches of real images decode to the instances of single frames ---------------------------


def _decode(model: Model, outputs: Sequence[np.ndarray], letterbox: Any) -> Instances:
    settings = PostprocessSettings(conf_threshold=0.25)
    spec = model.spec
    candidates = decode_prototype_outputs(outputs[spec.pred_index], outputs[spec.proto_index], spec.num_classes,
                                          settings.conf_threshold, max_candidates=settings.max_candidates)
    return Postprocessor(settings, spec.class_names)(candidates, letterbox, settings)


def _assert_same_instances(a: Instances, b: Instances) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_array_equal(a.mask_boxes, b.mask_boxes)
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))


def _batch_equals_singles(model: Model, images: Sequence[Path]) -> int:
    """Run ``images`` as one batch and one by one; assert equal instances; the instances found."""
    pre = Preprocessor(model.spec.normalization, pool_size=len(images))
    tensors, boxes = [], []
    for path in images:
        image = cv2.imread(str(path))
        assert image is not None, path
        prepared = pre(image, model.spec.input_size)
        assert prepared is not None
        tensors.append(prepared[0])
        boxes.append(prepared[1])
    batch = np.concatenate(tensors, axis=0)
    per_frame = model.backend.infer_batch(batch)
    assert len(per_frame) == len(images)
    found = 0
    for k, outputs in enumerate(per_frame):
        assert all(o.shape[0] == 1 for o in outputs)
        single = list(model.backend.infer(tensors[k]))
        for a, b in zip(outputs, single):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
        batched, alone = _decode(model, outputs, boxes[k]), _decode(model, single, boxes[k])
        _assert_same_instances(batched, alone)
        found += len(alone)
    return found


@pytest.fixture(scope="module")
def demo_rebatched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        from export import rebatch  # noqa: PLC0415 - the export stage refuses Pythons below 3.11
    except ImportError as exc:
        pytest.skip(f"the export stage rebatches the demo model: {exc}")
    target = tmp_path_factory.mktemp("rebatched") / "demo-320-fp32.onnx"
    rebatch.rebatch_file(DEMO_BUNDLE / "demo-320-fp32.onnx", target)
    return target


def test_demo_batch_of_4_decodes_as_4_single_frames(demo_rebatched: Path) -> None:
    model = load_model(demo_rebatched, threads=2)
    try:
        assert model.spec.max_batch is None and model.backend.max_batch is None
        images = sorted((DEMO_BUNDLE / "selftest").glob("*.jpg"))
        assert len(images) == 4
        assert _batch_equals_singles(model, images) > 0, "the demo model finds shapes on its self-test images"
    finally:
        model.close()


def test_real_yolov8n_seg_batch_of_4_decodes_as_4_single_frames(model_dynamic: Path, val_images: Path) -> None:
    model = load_model(model_dynamic, imgsz=320, threads=2)
    try:
        assert model.spec.max_batch is None and model.spec.input_size == (320, 320)
        assert _batch_equals_singles(model, sorted(val_images.glob("*.jpg"))[:4]) > 0
    finally:
        model.close()


# --- TensorRT: the batch profile's bookkeeping against fakes -----------------------------------


class BatchFakeTrt(FakeTrt):
    """FakeTrt whose contexts take a batch: each frame's outputs are that frame's input mean.

    Records every ``set_input_shape`` and the batch of every execution.
    """

    def __init__(self, version: str, cuda: FakeCuda) -> None:
        super().__init__(version, cuda)
        fake = self
        self.shape_calls: List[Tuple[int, ...]] = []
        self.executions: List[int] = []

        class Context:
            def __init__(self, engine: Any) -> None:
                cuda.need_context("create_execution_context")
                self.engine = engine
                self.shapes: Dict[str, Tuple[int, ...]] = {}
                self.addresses: Dict[str, int] = {}

            def set_optimization_profile_async(self, index: int, stream: int) -> bool:
                return True

            def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
                fake.shape_calls.append(tuple(shape))
                low, _, high = self.engine.profile
                if not all(a <= d <= b for a, d, b in zip(low, shape, high)):
                    return False
                self.shapes[name] = tuple(shape)
                return True

            def _input(self) -> Tuple[int, ...]:
                return self.shapes.get("images", tuple(self.engine.shapes["images"]))

            def get_tensor_shape(self, name: str) -> List[int]:
                n, _, h, w = self._input()
                return [n, 6, h * w // 64] if name == "pred" else [n, 2, h // 4, w // 4]

            def set_tensor_address(self, name: str, ptr: int) -> bool:
                self.addresses[name] = ptr
                return True

            def execute_async_v3(self, stream: int) -> bool:
                cuda.need_context("execute_async_v3")
                n, c, h, w = self._input()
                fake.executions.append(n)
                x = cuda.memory[self.addresses["images"]].view(np.float32)[: n * c * h * w].reshape(n, -1)
                for name, per in (("pred", 6 * h * w // 64), ("proto", 2 * (h // 4) * (w // 4))):
                    cuda.memory[self.addresses[name]].view(np.float32)[: n * per] = np.repeat(x.mean(axis=1), per)
                return True

        self.Context = Context  # FakeTrt's engines and runtime, with this batch-aware context


@pytest.fixture
def batch_fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tuple[BatchFakeTrt, FakeCuda]]:
    cuda = FakeCuda()
    trt = BatchFakeTrt("10.3.0", cuda)
    install_runtime(monkeypatch, trt)
    yield trt, cuda
    trt_backend.trt_logger.cache_clear()
    assert cuda.stack() == [], "a CUDA context was left pushed on the test thread"


BATCH_4_ENGINE = {
    "shapes": {"images": [-1, 3, 64, 64], "pred": [-1, 6, 64], "proto": [-1, 2, 16, 16]},
    "profile": [[1, 3, 64, 64], [4, 3, 64, 64], [4, 3, 64, 64]],
}
STATIC_1_ENGINE = {"shapes": {"images": [1, 3, 64, 64], "pred": [1, 6, 64], "proto": [1, 2, 16, 16]}}
STATIC_4_ENGINE = {"shapes": {"images": [4, 3, 64, 64], "pred": [4, 6, 64], "proto": [4, 2, 16, 16]}}


def _engine(tmp_path: Path, doc: Dict[str, Any]) -> Path:
    path = tmp_path / "m.engine"
    path.write_text(json.dumps(doc))
    return path


def _images(*values: float) -> np.ndarray:
    return np.stack([np.full((3, 64, 64), v, np.float32) for v in values])


def _assert_trt_frames(results: Sequence[Sequence[np.ndarray]], values: Sequence[float]) -> None:
    assert len(results) == len(values)
    for outputs, value in zip(results, values):
        assert [o.shape for o in outputs] == [(1, 6, 64), (1, 2, 16, 16)]
        assert all(np.allclose(o, value) for o in outputs)


@pytest.mark.parametrize("version", ["8.5.2.2", "8.6.2", "10.3.0"])
def test_trt_batch_engine_runs_a_batch_in_one_call(
    batch_fakes: Tuple[BatchFakeTrt, FakeCuda], tmp_path: Path, version: str
) -> None:
    trt, cuda = batch_fakes
    trt.__version__ = version
    with TensorRTBackend(_engine(tmp_path, BATCH_4_ENGINE), resolution=(64, 64), contexts=1) as backend:
        assert backend.max_batch == 4
        assert backend.info.inputs[0].shape == ("batch", 3, 64, 64)
        assert [t.shape for t in backend.info.outputs] == [("batch", 6, 64), ("batch", 2, 16, 16)]
        assert trt.shape_calls == [(4, 3, 64, 64)], "buffers planned for the profile's maximum"
        first = backend.infer_batch(_images(1, 2, 3))
        _assert_trt_frames(first, [1, 2, 3])
        _assert_trt_frames(backend.infer_batch(_images(4, 5, 6)), [4, 5, 6])
        _assert_trt_frames(first, [1, 2, 3])  # copies: the slot's buffers held other frames since
        _assert_trt_frames(backend.infer_batch(_images(1, 2, 3, 4)), [1, 2, 3, 4])
        single = backend.infer(_images(9))
        assert [o.shape for o in single] == [(1, 6, 64), (1, 2, 16, 16)] and np.allclose(single[0], 9)
        assert trt.executions == [3, 3, 4, 1]
        assert trt.shape_calls == [(4, 3, 64, 64), (3, 3, 64, 64), (4, 3, 64, 64), (1, 3, 64, 64)], \
            "the input shape is set only when the batch changes"
        with pytest.raises(ModelError) as err:
            backend.infer_batch(_images(*range(5)))
        assert "\n" not in str(err.value) and "m.engine" in str(err.value) and "maximum batch of 4" in str(err.value)
        with pytest.raises(ModelError, match=r"engine runs \(1\.\.4, 3, 64, 64\)"):
            backend.infer(np.zeros((1, 3, 32, 32), np.float32))
    assert cuda.memory == {} and all(h.freed for h in cuda.hosts)


def test_trt_static_engines_loop_or_pad(batch_fakes: Tuple[BatchFakeTrt, FakeCuda], tmp_path: Path) -> None:
    trt, _ = batch_fakes
    with TensorRTBackend(_engine(tmp_path, STATIC_1_ENGINE)) as backend:
        assert backend.max_batch == 1 and backend.info.inputs[0].shape == (1, 3, 64, 64)
        _assert_trt_frames(backend.infer_batch(_images(1, 2, 3)), [1, 2, 3])
    assert trt.executions == [1, 1, 1] and trt.shape_calls == []
    trt.executions.clear()
    (tmp_path / "4").mkdir()
    with TensorRTBackend(_engine(tmp_path / "4", STATIC_4_ENGINE)) as backend:
        assert backend.max_batch == 4 and backend.info.inputs[0].shape == (4, 3, 64, 64)
        _assert_trt_frames(backend.infer_batch(_images(1, 2)), [1, 2])
        with pytest.raises(ModelError, match=r"engine runs \(4, 3, 64, 64\)"):
            backend.infer(_images(1, 2))
    assert trt.executions == [4], "a static batch-4 engine runs 4 frames, 2 of them padding"


def test_trt_batch_engine_plans_every_context_for_the_maximum(
    batch_fakes: Tuple[BatchFakeTrt, FakeCuda], tmp_path: Path
) -> None:
    _, cuda = batch_fakes
    with TensorRTBackend(_engine(tmp_path, BATCH_4_ENGINE), resolution=(64, 64), contexts=2) as backend:
        assert backend._plan.batch == 4
        assert [t.nbytes for t in backend._plan.tensors] == [4 * 3 * 64 * 64 * 4, 4 * 6 * 64 * 4, 4 * 2 * 16 * 16 * 4]


# --- trt_plan: profiles, ranges and call shapes ----------------------------------------------------

BATCH_IN = trt_plan.TensorSpec("images", True, (-1, 3, 320, 320), F32)
DYN_IN = trt_plan.TensorSpec("images", True, (-1, 3, -1, -1), F32)
STATIC_IN = trt_plan.TensorSpec("images", True, (1, 3, 320, 320), F32)


@pytest.mark.parametrize(
    ("spec", "resolution", "n", "expected"),
    [
        (BATCH_IN, None, 4, ((1, 3, 320, 320), (4, 3, 320, 320), (4, 3, 320, 320))),
        (DYN_IN, (320, 320), 8, ((1, 3, 320, 320), (8, 3, 320, 320), (8, 3, 320, 320))),
        (DYN_IN, (320, 320), 1, ((1, 3, 320, 320),) * 3),
        (STATIC_IN, None, 1, ((1, 3, 320, 320),) * 3),
    ],
)
def test_batch_profile_is_min_1_opt_n_max_n(
    spec: trt_plan.TensorSpec, resolution: Optional[Tuple[int, int]], n: int, expected: Tuple[Any, ...]
) -> None:
    assert trt_plan.batch_profile(spec, resolution, n) == trt_plan.ProfileShapes(*expected)


def test_a_static_batch_cannot_be_profiled_for_more_frames() -> None:
    with pytest.raises(ValueError, match=r"static batch of 1 .*symbolic .*export --batch 4.*export\.rebatch"):
        trt_plan.batch_profile(STATIC_IN, None, 4)
    assert trt_plan.build_profiles([STATIC_IN], None, 1) == {}
    with pytest.raises(ValueError, match="static batch"):
        trt_plan.build_profiles([STATIC_IN], None, 2)


@pytest.mark.parametrize(
    ("spec", "profile", "expected"),
    [
        (STATIC_IN, None, (1, 1)),
        (trt_plan.TensorSpec("images", True, (4, 3, 320, 320), F32), None, (4, 4)),
        (BATCH_IN, trt_plan.batch_profile(BATCH_IN, None, 8), (1, 8)),
        (BATCH_IN, None, (1, 1)),
    ],
)
def test_batch_range(spec: trt_plan.TensorSpec, profile: Optional[trt_plan.ProfileShapes],
                     expected: Tuple[int, int]) -> None:
    assert trt_plan.batch_range(spec, profile) == expected


def test_call_batch_accepts_the_range_and_names_it_otherwise() -> None:
    planned = (4, 3, 64, 64)
    assert [trt_plan.call_batch(planned, (n, 3, 64, 64), 1, 4) for n in (1, 2, 4)] == [1, 2, 4]
    for shape in [(5, 3, 64, 64), (0, 3, 64, 64), (2, 3, 32, 32), (2, 3, 64)]:
        with pytest.raises(ValueError, match=r"engine runs \(1\.\.4, 3, 64, 64\)"):
            trt_plan.call_batch(planned, shape, 1, 4)


def test_plan_buffers_at_the_profile_maximum_needs_batch_led_outputs() -> None:
    profile = {"images": trt_plan.batch_profile(BATCH_IN, None, 4)}
    pred = trt_plan.TensorSpec("pred", False, (-1, 116, 2100), F32)
    plan = trt_plan.plan_buffers([BATCH_IN, pred], None, profile, {"pred": (4, 116, 2100)})
    assert plan.batch == 4 and plan.inputs[0].shape == (4, 3, 320, 320)
    with pytest.raises(ValueError, match="must lead with the batch"):
        trt_plan.plan_buffers([BATCH_IN, pred], None, profile, {"pred": (116, 4, 2100)})
    assert trt_plan.input_shape(BATCH_IN, None, profile["images"], batch=2) == (2, 3, 320, 320)


# --- the builder's batch profile (fake TensorRT builder) ---------------------------------------


def _onnx(tmp_path: Path, doc: Dict[str, Any]) -> Path:
    path = tmp_path / "m.onnx"
    path.write_text(json.dumps(doc))
    return path


FP32_BATCH_ONNX = {"input": [-1, 3, 320, 320], "layers": ["CONVOLUTION"], "types": ["FLOAT"]}


@pytest.mark.parametrize(("version", "profiles"), [("8.6.2", 2), ("10.3.0", 1)])
def test_build_engine_adds_the_batch_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str, profiles: int
) -> None:
    trt: FakeBuilderTrt = install_builder(monkeypatch, version)
    build_engine(_onnx(tmp_path, FP32_BATCH_ONNX), tmp_path / "m.engine", "fp16", resolution=(320, 320), max_batch=4)
    low, high = (1, 3, 320, 320), (4, 3, 320, 320)
    assert [c for c in trt.calls if c[0] == "profile"] == [("profile", {"images": (low, high, high)})] * profiles


def test_build_engine_refuses_a_batch_from_a_static_onnx(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install_builder(monkeypatch, "10.3.0")
    static = {**FP32_BATCH_ONNX, "input": [1, 3, 320, 320]}
    engine = tmp_path / "m.engine"
    with pytest.raises(ExportError, match="static batch of 1") as err:
        build_engine(_onnx(tmp_path, static), engine, "fp16", max_batch=4)
    assert "\n" not in str(err.value) and not engine.exists()


def test_engine_record_max_batch_defaults_to_1() -> None:
    assert EngineRecord.model_fields["max_batch"].default == 1
