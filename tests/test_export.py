"""Export stage: static ONNX per resolution, BN folding, atomic bundles, early refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.bundle.manifest import load_manifest
from edgeseg.bundle.verify import integrity_problems
from edgeseg.errors import EdgesegError, ExportError
from edgeseg.model import load_model
from export import onnx_prep
from export.pipeline import ExportOptions, export_bundle
from export.recipe import build_options

ROOT = Path(__file__).resolve().parents[1]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _conv_bn_graph(with_conv: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("W", rng.normal(size=(8, 3, 3, 3))), ("g", rng.random(8) + 0.5), ("b", rng.normal(size=8)),
        ("m", rng.normal(size=8)), ("v", rng.random(8) + 0.1)]]
    nodes = [helper.make_node("BatchNormalization", ["c" if with_conv else "x", "g", "b", "m", "v"], ["y"])]
    channels = 8
    if with_conv:
        nodes.insert(0, helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]))
    else:
        inits = inits[1:]
        for t in inits:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:3], t.name))
        channels = 3
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("with_conv, folds", [(True, True), (False, False)])
def test_batchnorm_is_folded_or_refused(with_conv: bool, folds: bool) -> None:
    proto = _conv_bn_graph(with_conv)
    source = onnx_prep.SourceModel(Path("t.onnx"), proto, None, "x", False)  # type: ignore[arg-type]
    if folds:
        prepared = onnx_prep.prepare_static(source, 16)
        assert [n.op_type for n in prepared.graph.node] == ["Conv"]
        assert onnx_prep.check_against_source(source, prepared, 16) < 1e-4
    else:
        with pytest.raises(ExportError, match="BatchNormalization not preceded by a Conv cannot be folded"):
            onnx_prep.prepare_static(source, 16)


def test_dynamic_model_is_pinned_per_resolution(model_dynamic: Path) -> None:
    source = onnx_prep.load_source(model_dynamic)
    assert source.dynamic and source.spec.num_classes == 80
    prepared = onnx_prep.prepare_static(source, 320)
    dims = [d.dim_value for d in prepared.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 320, 320]
    assert not [n for n in prepared.graph.node if n.op_type == "BatchNormalization"]
    assert next(o.version for o in prepared.opset_import if o.domain in ("", "ai.onnx")) == 17
    meta = {p.key: p.value for p in prepared.metadata_props}
    assert meta["imgsz"] == "[320, 320]" and "person" in meta["names"]
    assert onnx_prep.check_against_source(source, prepared, 320) <= onnx_prep.OUTPUT_RTOL


def _classifier(tmp_path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["images"], ["pooled"])], "cls",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3, 1, 1])])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                 tmp_path / "classifier.onnx")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("classifier", "not a prototype-mask model"),
        ("corrupt", "not a readable ONNX file"),
        ("missing", "model file not found"),
        ("resolution", "resolution 1600: expected a multiple of 32 from 320 to 1280"),
        ("odd_resolution", "resolution 333"),
        ("no_calibration", "precision int8 needs --calibration DIR"),
        ("empty_calibration", "calib: no image files; expected images"),
        ("half_validation", "needs both --val-images DIR and --val-annotations"),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path: Path, model_dynamic: Path, case: str, expected: str) -> None:
    model, calib, resolutions, precisions = model_dynamic, None, (320,), ("fp32",)
    val: Path | None = None
    if case == "classifier":
        model = _classifier(tmp_path)
    elif case == "corrupt":
        model = tmp_path / "corrupt.onnx"
        model.write_bytes(b"\x00garbage" * 64)
    elif case == "missing":
        model = tmp_path / "none.onnx"
    elif case == "resolution":
        resolutions = (320, 1600)
    elif case == "odd_resolution":
        resolutions = (333,)
    elif case == "no_calibration":
        precisions = ("int8",)
    elif case == "empty_calibration":
        precisions, calib = ("int8",), tmp_path / "calib"
        calib.mkdir()
    elif case == "half_validation":
        val = tmp_path
    out = tmp_path / "engines" / "b"
    opts = ExportOptions(model=model, out=out, resolutions=resolutions, precisions=precisions,  # type: ignore[arg-type]
                         calibration=calib, val_images=val, progress=False)
    with pytest.raises(EdgesegError) as info:
        export_bundle(opts)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").iterdir())


def test_failed_build_leaves_no_half_bundle_and_keeps_the_old_one(
    tmp_path: Path, model_dynamic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "engines" / "b"
    export_bundle(ExportOptions(model=model_dynamic, out=out, resolutions=(320,), precisions=("fp32",),
                                latency_runs=1, progress=False))
    before = sorted(p.name for p in out.iterdir())
    import export.onnx_prep as prep

    def boom(*_a: object, **_k: object) -> float:
        raise ExportError("simulated failure while checking outputs")

    monkeypatch.setattr(prep, "check_against_source", boom)
    with pytest.raises(ExportError, match="simulated failure"):
        export_bundle(ExportOptions(model=model_dynamic, out=out, resolutions=(320, 416), precisions=("fp32",),
                                    latency_runs=1, progress=False))
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in out.parent.iterdir()] == ["b"]  # no staging directory left behind


def test_export_bundle_runs_in_the_runtime(tmp_path: Path, model_dynamic: Path, val_images: Path,
                                          val_annotations: Path) -> None:
    import json

    from conftest import copy_images

    images = copy_images(val_images, tmp_path / "val", 4)
    doc = json.loads(val_annotations.read_text())
    names = {p.name for p in images.iterdir()}
    doc["images"] = [im for im in doc["images"] if im["file_name"] in names]
    ids = {im["id"] for im in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(doc))
    out = tmp_path / "engines" / "yolo"
    result = export_bundle(ExportOptions(model=model_dynamic, out=out, resolutions=(320, 416), precisions=("fp32",),
                                         val_images=images, val_annotations=ann, latency_runs=2, progress=False))
    manifest = load_manifest(out)
    assert [max(e.resolution) for e in manifest.engines] == [320, 416]
    assert integrity_problems(out, manifest) == []
    assert all(e.latency and e.latency.median_ms > 0 for e in manifest.engines)
    assert all(e.accuracy and e.accuracy.images == 4 and e.accuracy.mask_map > 0.1 for e in manifest.engines)
    assert manifest.model.class_names[0] == "person"
    report = result.report.read_text()
    assert "| yolo-320-fp32.onnx | onnxruntime | fp32 | 320x320 |" in report
    assert (out / "latency.png").stat().st_size > 1000 and (out / "accuracy.png").exists()
    model = load_model(out, imgsz=416)
    assert model.spec.input_size == (416, 416) and model.engine is not None
    outputs = model.backend.infer(np.zeros((1, 3, 416, 416), np.float32))
    assert outputs[model.spec.pred_index].shape[1] == 116


def test_static_model_yields_its_one_resolution(tmp_path: Path, model_640: Path) -> None:
    out = tmp_path / "b"
    result = export_bundle(ExportOptions(model=model_640, out=out, resolutions=(320, 640), precisions=("fp32",),
                                         latency_runs=1, progress=False))
    assert [max(e.resolution) for e in result.manifest.engines] == [640]
    assert any("static 640x640 input: it yields its one resolution" in n for n in result.notes)


@pytest.mark.parametrize(
    "recipe, expected",
    [
        ("model: m.onnx\nout: engines/x\ncolour: red\n", "field 'colour': unknown key"),
        ("model: m.onnx\nout: engines/x\nprecision: [fp8]\n", "precision fp8: expected a list of fp32, fp16, int8"),
        ("out: engines/x\n", "field 'model'"),
    ],
)
def test_recipe_errors(tmp_path: Path, recipe: str, expected: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(recipe)
    with pytest.raises(ExportError, match=expected):
        build_options(str(path), {})


def test_recipe_paths_are_relative_to_the_recipe(tmp_path: Path) -> None:
    path = tmp_path / "recipes" / "r.yaml"
    path.parent.mkdir()
    path.write_text("model: ../m.onnx\nout: ../engines/x\nresolutions: [416, 320]\nprecision: [int8, fp32]\n"
                    "calibration: ../calib\n")
    opts = build_options(str(path), {"resolutions": [640]})
    assert opts.model == tmp_path / "m.onnx" and opts.out == tmp_path / "engines" / "x"
    assert opts.resolutions == (640,) and opts.precisions == ("fp32", "int8")
    assert opts.calibration == tmp_path / "calib"


def test_cli_export_errors_are_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeseg", "export", "--model", str(_classifier(tmp_path)),
                           "--out", str(tmp_path / "b"), "--precision", "fp32"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("edgeseg: ")
    assert "not a prototype-mask model" in proc.stderr


def test_export_accepts_an_edgeseg_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from export.models.edgeseg import ModelConfig, build_model
    from export.train.checkpoints import Checkpoint, save_checkpoint

    torch.manual_seed(0)
    config = ModelConfig.create("tiny", ["circle", "square"], num_masks=8, imgsz=320)
    model = build_model(config)
    ckpt = save_checkpoint(Checkpoint(tmp_path / "m.pt", config, model.state_dict()), tmp_path / "m.pt")
    out = tmp_path / "engines" / "tiny"
    result = export_bundle(ExportOptions(model=ckpt, out=out, resolutions=(320,), precisions=("fp32",),
                                         latency_runs=1, progress=False))
    manifest = result.manifest
    assert manifest.model.family == "edgeseg" and manifest.model.class_names == ["circle", "square"]
    assert manifest.model.source == str(ckpt) and manifest.model.num_masks == 8
    loaded = load_model(out)
    assert loaded.spec.family == "edgeseg" and loaded.spec.input_size == (320, 320)
