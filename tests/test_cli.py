"""The edgeseg command as a user runs it: one-line errors, valid outputs, clean stops.

Runs on the repository's own demo bundle (engines/demo, a 320 px student for synthetic shapes)
and its self-test images, so that a clone without ../shared/realdata tests the whole command;
only the COCO accuracy check needs the real yolov8n-seg and images.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from conftest import DEMO_BUNDLE, DEMO_CLASS_NAMES, demo_images
from pycocotools import mask as coco_mask

from edgeseg.sinks.serialize import load_schema

ROOT = Path(__file__).resolve().parents[1]


def edgeseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgeseg: ")]
    assert len(errors) == 1, proc.stderr
    assert expected in errors[0]


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The demo bundle; it is part of the repository, so its absence is a failure, not a skip."""
    assert (DEMO_BUNDLE / "manifest.json").is_file(), f"the demo bundle {DEMO_BUNDLE} is missing"
    return DEMO_BUNDLE


@pytest.fixture()
def three_images(tmp_path: Path) -> Path:
    """Three of the demo's self-test images (synthetic shapes the demo model finds; tests may damage them)."""
    return demo_images(tmp_path / "imgs", 3)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--model", "/nonexistent/m.onnx"], "model file not found: /nonexistent/m.onnx"),
        (["--sink", "kafka:somewhere"], "has unknown kind 'kafka'; valid kinds: coco, events, images, jsonl"),
        (["--sink", "jsonl"], "jsonl"),
        (["--conf", "2"], "field 'postprocess.conf_threshold'"),
        (["--imgsz", "100"], "field 'model.imgsz'"),
        (["--source", "gopher://x"], "gopher://x"),
        (["--source", "/nonexistent/dir"], "/nonexistent/dir"),
    ],
)
def test_bad_input_is_one_line(demo_model: Path, three_images: Path, extra: list[str], expected: str) -> None:
    args = ["run", "--model", str(demo_model), "--source", str(three_images), *extra]
    _assert_one_line_error(edgeseg(*args), expected)


def test_corrupt_model_is_one_line(tmp_path: Path, three_images: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    _assert_one_line_error(edgeseg("run", "--model", str(bad), "--source", str(three_images)), "cannot load model")


def test_invalid_config_file_is_one_line(tmp_path: Path, three_images: Path, demo_model: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("postprocess:\n  nms: fastest\n  colour: red\n")
    proc = edgeseg("run", "--config", str(cfg), "--model", str(demo_model), "--source", str(three_images))
    _assert_one_line_error(proc, "field 'postprocess.nms'")
    assert "field 'postprocess.colour': unknown key" in proc.stderr


@pytest.mark.parametrize("model", ["bundle", "onnx"])
def test_run_writes_schema_valid_jsonl_and_annotations(
    demo_model: Path, three_images: Path, tmp_path: Path, model: str
) -> None:
    """The bundle folder and its bare fp32 ONNX file (names and stride in its metadata) alike."""
    path = demo_model if model == "bundle" else demo_model / "demo-320-fp32.onnx"
    out = tmp_path / "out"
    proc = edgeseg("run", "--model", str(path), "--source", str(three_images),
                   "--sink", f"jsonl:{out}/r.jsonl", "--sink", f"images:{out}/ann", "--mask-format", "polygon")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("run: 3 frames")
    lines = (out / "r.jsonl").read_text().splitlines()
    assert len(lines) == 3
    schema = load_schema()
    for line in lines:
        doc = json.loads(line)
        jsonschema.validate(doc, schema)
        assert doc["instances"] and doc["instances"][0]["mask"]["format"] == "polygon"
        assert {i["class_name"] for i in doc["instances"]} <= set(DEMO_CLASS_NAMES)
    assert sorted(p.name for p in (out / "ann").iterdir()) == sorted(p.name for p in three_images.iterdir())


def test_broken_images_are_skipped_and_the_run_completes(demo_model: Path, three_images: Path, tmp_path: Path) -> None:
    good = next(three_images.iterdir()).read_bytes()
    (three_images / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    (three_images / "zz_empty.jpg").write_bytes(b"")
    (three_images / "notes.txt").write_text("not an image")
    out = tmp_path / "r.jsonl"
    proc = edgeseg("run", "--model", str(demo_model), "--source", str(three_images), "--sink", f"jsonl:{out}")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "zz_truncated.jpg" in proc.stderr and "zz_empty.jpg" in proc.stderr
    assert len(out.read_text().splitlines()) == 3
    assert "3 skipped" in proc.stdout


def test_sigterm_finishes_frames_in_flight_and_exits_zero(demo_model: Path, three_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseg", "run", "--model", str(demo_model), "--source", str(three_images),
         "--loop", "--sink", f"jsonl:{out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "SIGTERM: finishing frames in flight" in stderr
    lines = out.read_text().splitlines()
    frames = int(stdout.split("run: ")[1].split(" frames")[0])
    assert len(lines) == frames >= 4
    assert [json.loads(line)["frame_id"] for line in lines] == list(range(frames))


def test_eval_scores_a_subset(model_640: Path, val_images: Path, val_annotations: Path, tmp_path: Path) -> None:
    doc = json.loads(val_annotations.read_text())
    keep = {im["id"] for im in sorted(doc["images"], key=lambda im: im["file_name"])[:12]}
    doc["images"] = [im for im in doc["images"] if im["id"] in keep]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps(doc))
    out = tmp_path / "results.json"
    proc = edgeseg("eval", "--model", str(model_640), "--images", str(val_images),
                   "--annotations", str(subset), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    box = float(line.split("box mAP50-95 ")[1].split()[0])
    mask = float(line.split("mask mAP50-95 ")[1].split()[0])
    assert box > 0.25 and mask > 0.2, line  # a wrong class mapping or mask placement scores ~0
    results = json.loads(out.read_text())
    assert results and {r["image_id"] for r in results} <= keep


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--annotations", "/nonexistent.json"], "annotations file not found"),
        (["--images", "/nonexistent"], "images folder not found"),
        (["--annotations", "{tmp}/list.json"], "expected a COCO instances file (a JSON object), found list"),
        (["--annotations", "{tmp}/no-images.json"], "field 'images': expected a list"),
    ],
)
def test_eval_bad_input(demo_model: Path, three_images: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    base = {"--images": str(three_images), "--annotations": str(_demo_annotations(three_images, tmp_path))}
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "no-images.json").write_text('{"annotations": [], "categories": []}')
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base.update(dict(zip(args[::2], args[1::2])))
    flat = [x for kv in base.items() for x in kv]
    out = tmp_path / "r.json"
    proc = edgeseg("eval", "--model", str(demo_model), *flat, "--out", str(out))
    _assert_one_line_error(proc, expected)
    assert not out.exists()


def _demo_annotations(images: Path, tmp_path: Path) -> Path:
    """A COCO instances file for the demo images in ``images``: the demo's own self-test reference
    (its fp32 engine's instances, RLE masks) as ground truth, the bundle's class table as categories."""
    manifest = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    reference = json.loads((DEMO_BUNDLE / "selftest" / "reference.json").read_text())["resolutions"]["320"]["images"]
    doc: dict[str, list[dict[str, object]]] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(manifest["model"]["class_names"])],
    }
    for image_id, path in enumerate(sorted(images.glob("*.jpg")), start=1):
        doc["images"].append({"id": image_id, "file_name": path.name, "height": 320, "width": 320})
        for inst in reference[f"selftest/{path.name}"]:
            x0, y0, x1, y1 = inst["box"]
            rle = {"size": inst["mask"]["size"], "counts": inst["mask"]["counts"]}
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": inst["class_id"] + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(coco_mask.area(rle)), "iscrowd": 0,
                "segmentation": rle,
            })
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc))
    return path


def test_eval_on_the_demo_scores_its_own_reference(demo_model: Path, three_images: Path, tmp_path: Path) -> None:
    """Scored against the instances its own engine gave at export, the demo scores high: a wrong
    category mapping, box scaling or mask placement would score near 0."""
    annotations = _demo_annotations(three_images, tmp_path)
    out = tmp_path / "results.json"
    proc = edgeseg("eval", "--model", str(demo_model), "--images", str(three_images),
                   "--annotations", str(annotations), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("eval: 3 images, "), line
    box = float(line.split("box mAP50-95 ")[1].split()[0])
    mask = float(line.split("mask mAP50-95 ")[1].split()[0])
    assert box > 0.9 and mask > 0.85, line
    results = json.loads(out.read_text())
    assert {r["image_id"] for r in results} == {1, 2, 3}
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4, 5}


def test_bench_reports_stages_fps_and_memory(demo_model: Path, three_images: Path) -> None:
    proc = edgeseg("bench", "--model", str(demo_model), "--imgsz", "320", "--source", str(three_images),
                   "--frames", "8", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["frames"] == 8
    assert set(report["stages"]) >= {"capture", "preprocess", "infer", "decode", "postprocess", "sink"}
    assert report["pipeline_fps"] > 0 and report["sequential_fps"] > 0
    assert report["rss_mb"]["peak"] > 0
    assert report["input_size"] == [320, 320]


def test_help_lists_every_source_scheme() -> None:
    proc = edgeseg("run", "--help")
    for scheme in ("v4l2://", "csi://", "rtsp://", "http"):
        assert scheme in proc.stdout


def test_runtime_never_imports_torch() -> None:
    code = "import sys, edgeseg.cli, edgeseg.app, edgeseg.bench, edgeseg.evaluation.coco; print('torch' in sys.modules)"
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_unreachable_rtsp_keeps_the_run_alive_until_sigterm(demo_model: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("source:\n  reconnect_initial_s: 0.1\n  reconnect_max_s: 0.4\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseg", "run", "--config", str(cfg), "--model", str(demo_model),
         "--source", f"rtsp://user:secret@127.0.0.1:{port}/cam"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    time.sleep(4)
    assert proc.poll() is None, "the run ended although a live source only dropped"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "secret" not in stderr
    assert f"127.0.0.1:{port}" in stderr  # the reconnect attempts are logged, naming the URI
    assert stdout.startswith("run: 0 frames")


def test_missing_export_extra_is_one_line_naming_the_module_and_the_fix() -> None:
    from edgeseg.errors import ExportError

    err = ExportError.missing_dependency("edgeseg train", ImportError("No module named 'torch'", name="torch"))
    assert str(err) == ("edgeseg train needs the export stage's dependencies (torch is missing): "
                        "pip install 'edgeseg[export]'")
