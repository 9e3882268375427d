"""The EdgeSeg model family: shapes per size, BN layout, and the ONNX export the runtime reads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the export stage's torch is not installed")

from edgeseg.errors import ExportError  # noqa: E402
from edgeseg.model import load_model  # noqa: E402
from edgeseg.pipeline.processor import FrameProcessor  # noqa: E402
from edgeseg.postprocess import Postprocessor, PostprocessSettings  # noqa: E402
from edgeseg.structures import Frame  # noqa: E402
from export.models.edgeseg import (  # noqa: E402
    MODEL_SIZES,
    ConvBN,
    EdgeSeg,
    ModelConfig,
    build_model,
    count_flops,
    count_parameters,
)
from export.torch_export import export_model  # noqa: E402

NAMES = ("box", "disc", "ring")
SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomise_bn(model: EdgeSeg, seed: int = 0) -> EdgeSeg:
    """BN statistics away from identity, so that folding and export are really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> EdgeSeg:
    torch.manual_seed(0)
    return _randomise_bn(build_model(ModelConfig.create("tiny", NAMES, imgsz=SIZE)))


@pytest.fixture(scope="module")
def tiny_onnx(tiny: EdgeSeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tiny, tmp_path_factory.mktemp("onnx") / "tiny.onnx", SIZE)


@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_output_shapes_per_size(size: str) -> None:
    model = build_model(ModelConfig.create(size, NAMES, num_masks=8))
    n = (8 * 12) + (4 * 6) + (2 * 3)  # a 64 x 96 input at strides 8, 16, 32
    out = model(torch.zeros(2, 3, 64, 96))
    assert out.cls_logits.shape == (2, n, 3)
    assert out.distances.shape == (2, n, 4) and bool((out.distances > 0).all())
    assert out.coefficients.shape == (2, n, 8)
    assert out.protos.shape == (2, 8, 16, 24)
    assert out.anchors.shape == (n, 2) and out.strides.shape == (n, 1)
    assert out.level_sizes == [(8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in out.features] == [c.shape[1] for c in out.features]
    model.eval()
    with torch.no_grad():
        preds, protos = model.predict(torch.zeros(1, 3, 64, 96))
    assert preds.shape == (1, 4 + 3 + 8, n) and protos.shape == (1, 8, 16, 24)
    assert bool(((preds[0, 4:7] >= 0) & (preds[0, 4:7] <= 1)).all()), "class scores are sigmoids"


def test_sizes_grow_in_parameters_and_flops() -> None:
    counts = [count_parameters(build_model(ModelConfig.create(s, NAMES))) for s in MODEL_SIZES]
    assert counts == sorted(counts) and counts[0] < 4e6
    tiny = build_model(ModelConfig.create("tiny", NAMES))
    assert 1e9 < count_flops(tiny, 320) < 5e9


def test_every_batchnorm_follows_its_conv() -> None:
    """Slimming reads the BN scales of ConvBN units; folding needs the BN right after the conv."""
    model = build_model(ModelConfig.create("tiny", NAMES))
    units = [m for m in model.modules() if isinstance(m, ConvBN)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == len(units) > 50
    assert all(u.conv.bias is None and u.conv.out_channels == u.bn.num_features for u in units)


def test_predict_decodes_the_training_outputs() -> None:
    """Export mode = training outputs in the yolov8-seg layout (cx, cy, w, h; sigmoid scores)."""
    model = build_model(ModelConfig.create("tiny", NAMES, num_masks=4)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        preds, protos = model.predict(x)
    boxes = out.boxes()[0]
    cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    torch.testing.assert_close(preds[0, :4].T, cxcywh)
    torch.testing.assert_close(preds[0, 4:7].T, out.cls_logits[0].sigmoid())
    torch.testing.assert_close(preds[0, 7:].T, out.coefficients[0])
    torch.testing.assert_close(protos, out.protos)


def test_model_config_round_trip() -> None:
    cfg = ModelConfig.create("small", NAMES, num_masks=16, imgsz=416)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


DROP = object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unknown model config field 'extra'"),
        ({"depth": DROP}, "lacks field 'depth'"),
        ({"width": "wide"}, "malformed"),
        ({"num_masks": 0}, "non-positive"),
        ({"class_names": []}, "empty class table"),
    ],
)
def test_model_config_refusals(change: dict[str, object], message: str) -> None:
    raw = {**ModelConfig.create("small", NAMES).to_dict(), **change}
    raw = {k: v for k, v in raw.items() if v is not DROP}
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(raw)


def test_unknown_size_is_refused() -> None:
    with pytest.raises(ExportError, match="model size 'huge': expected one of tiny, small, medium, large"):
        ModelConfig.create("huge", NAMES)


def test_pruned_config_rebuilds_from_narrower_weights() -> None:
    """A slimmed network (channels removed) loads from its weights alone, as fine-tuning needs."""
    cfg = ModelConfig.create("tiny", NAMES)
    state = build_model(cfg).state_dict()
    keep = 12  # the stem's 16 channels cut to 12: its conv, its BN and the next conv's input
    for key in ("backbone.stem.conv.weight",):
        state[key] = state[key][:keep]
    for key in ("weight", "bias", "running_mean", "running_var"):
        state[f"backbone.stem.bn.{key}"] = state[f"backbone.stem.bn.{key}"][:keep]
    state["backbone.stage1.0.conv.weight"] = state["backbone.stage1.0.conv.weight"][:, :keep]
    with pytest.raises(RuntimeError):
        build_model(cfg, state)
    pruned = build_model(ModelConfig.from_dict({**cfg.to_dict(), "pruned": True}), state)
    assert pruned.backbone.stem.conv.out_channels == keep
    assert pruned(torch.zeros(1, 3, 64, 64)).protos.shape == (1, 32, 16, 16)


def test_onnx_matches_torch_at_two_sizes(tiny: EdgeSeg, tiny_onnx: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for h, w in ((SIZE, SIZE), (96, 160)):
        x = rng.random((1, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            ref = [t.numpy() for t in tiny.predict(torch.from_numpy(x))]
        got = session.run(None, {"images": x})
        for a, b in zip(got, ref):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))


def test_onnx_layout_and_metadata(tiny_onnx: Path) -> None:
    import onnx

    proto = onnx.load(str(tiny_onnx))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["names"]) == list(NAMES)
    assert meta["edgeseg.family"] == "edgeseg" and meta["stride"] == "32"
    assert json.loads(meta["edgeseg.normalization"])["pad_value"] == 114
    assert ModelConfig.from_dict(json.loads(meta["edgeseg.model"])).class_names == NAMES
    assert [o.name for o in proto.graph.output] == ["output0", "output1"]
    rows = proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    assert rows == 4 + len(NAMES) + 32, "the row count must be static for the runtime's contract check"
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]


def test_runtime_loads_decodes_and_postprocesses_it(tiny: EdgeSeg, tmp_path: Path) -> None:
    """load_model accepts the file; the one decoder and the postprocessor give Instances."""
    confident = build_model(tiny.config, tiny.state_dict())
    for seq in confident.head.cls:
        torch.nn.init.constant_(seq[-1].bias, 2.0)  # scores well above the threshold everywhere
    path = export_model(confident, tmp_path / "confident.onnx", SIZE)
    model = load_model(path, imgsz=320)
    try:
        spec = model.spec
        assert (spec.family, spec.class_names, spec.num_masks, spec.dynamic) == ("edgeseg", NAMES, 32, True)
        assert spec.input_size == (320, 320) and spec.stride == 32
        processor = FrameProcessor(model, Postprocessor(PostprocessSettings(conf_threshold=0.5, max_detections=20),
                                                        spec.class_names))
        image = np.random.default_rng(0).integers(0, 255, (240, 300, 3), dtype=np.uint8)
        work = processor.prepare(Frame(image, 0, "test", time.time()))
        assert work is not None
        result = processor.finish(processor.infer(work))
    finally:
        model.close()
    inst = result.instances
    assert 0 < len(inst.scores) <= 20 and inst.image_size == (240, 300)
    assert len(inst.masks) == len(inst.scores)
    assert bool((inst.boxes[:, [0, 2]] <= 300).all()) and bool((inst.boxes[:, [1, 3]] <= 240).all())


def test_export_pipeline_prepares_it(tiny_onnx: Path) -> None:
    """The export stage's ONNX path (pin shape, simplify, fold BN, check) accepts the file."""
    from export import onnx_prep

    source = onnx_prep.load_source(tiny_onnx)
    assert source.dynamic and source.spec.family == "edgeseg"
    static = onnx_prep.prepare_static(source, 320)
    assert onnx_prep.check_against_source(source, static, 320) < onnx_prep.OUTPUT_RTOL


def test_export_refuses_a_size_off_the_stride(tiny: EdgeSeg, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="imgsz 100: expected a positive multiple of 32"):
        export_model(tiny, tmp_path / "x.onnx", 100)
