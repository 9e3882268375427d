"""Issue 15's table in one run: ONNX Runtime against OpenVINO on the real yolov8n-seg at 320 and 640.

Per input size, from the dynamic fp32 model: the static, simplified fp32 ONNX a bundle ships at
that size (``export.onnx_prep.prepare_static``), edgeseg's int8 CPU form for ONNX Runtime
(QOperator, ``export.quantize.quantize_for_cpu``) and the OpenVINO int8 IR (NNCF, decode head in
float, gated against fp32: ``export.openvino_quant``), both calibrated on the 80 COCO train2017
images, never the evaluation images. Then per row:

* raw inference: median ``backend.infer`` of real letterboxed val images, the rows taking turns
  image by image so that load from other processes hits them alike;
* end-to-end FPS: the threaded pipeline over the 158 val images (``edgeseg bench``'s
  ``run_bench``, no sequential baseline);
* box and mask mAP50-95 on the 158 val images (``edgeseg eval``'s ``evaluate``, COCO protocol);
* peak RSS of ``edgeseg run`` over the 158 images in a child process (``benchmarks/memory.py``'s
  way), with a fresh OpenVINO cache (the first start compiles).

    .venv/bin/python benchmarks/bench_openvino.py [--sizes 320,640] [--threads 2] [--count 80]

The shared ``yolov8n-seg_int8.onnx`` is checked for the QOperator form and not used when it is
another (it is ONNX Runtime dynamic quantisation: ConvInteger, 320 only). Everything made goes to
a temporary directory, removed at the end unless ``--keep DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgeseg.app import open_model
from edgeseg.bench import run_bench
from edgeseg.config import Config, parse_config
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.coco import EVAL_POSTPROCESS, evaluate
from edgeseg.model import Model
from edgeseg.preprocess import Preprocessor
from edgeseg.sources.images import decode_image
from export.calibration import calibration_images
from export.onnx_prep import load_source, prepare_static, save
from export.openvino_quant import quantize_openvino
from export.quantize import quantize_for_cpu

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
DEFAULT_MODEL = REALDATA / "models" / "yolov8n-seg-dynamic-fp32-reconstructed.onnx"
SHARED_INT8 = REALDATA / "models" / "yolov8n-seg_int8.onnx"
DEFAULT_CALIBRATION = REALDATA / "coco_train2017_subset" / "images"
DEFAULT_IMAGES = REALDATA / "coco_val2017_subset" / "images"
DEFAULT_ANNOTATIONS = REALDATA / "coco_val2017_subset" / "instances_val2017_subset.json"
#: Inference threads, as on the 2-core reference machine.
DEFAULT_THREADS = 2
#: Real images timed per row for the raw inference column.
DEFAULT_RAW_IMAGES = 40
#: Untimed inferences per row before timing.
WARMUP_RUNS = 5


@dataclass
class Row:
    """One runtime and form at one size, and what was measured of it."""

    name: str
    model: dict[str, Any]
    note: str = ""
    raw_ms: float | None = None
    fps: float | None = None
    box_map: float | None = None
    mask_map: float | None = None
    rss_mb: float | None = None
    provider: str = ""
    errors: list[str] = field(default_factory=list)


def quantisation_form(path: Path) -> str:
    """How an int8 ONNX was quantised, read from its op types: QOperator (QLinearConv, edgeseg's
    CPU form), QDQ (QuantizeLinear/DequantizeLinear pairs) or dynamic (ConvInteger)."""
    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    if ops["QLinearConv"]:
        return "QOperator"
    if ops["ConvInteger"] or ops["DynamicQuantizeLinear"]:
        return "dynamic (ConvInteger)"
    if ops["QuantizeLinear"] and ops["DequantizeLinear"]:
        return "QDQ"
    return "float"


def _config(row: Row, threads: int, extra: dict[str, Any] | None = None) -> Config:
    return parse_config({"model": {**row.model, "threads": threads}, **(extra or {})})


def _openvino(precision: str) -> dict[str, Any]:
    return {"backend": "openvino", "openvino": {"precision": precision, "cache_dir": ""}}


def build_rows(size: int, work: Path, args: argparse.Namespace) -> list[Row]:
    """The files of one size, made into ``work``, and the rows that run them."""
    log = logging.getLogger("bench")
    fp32 = save(prepare_static(load_source(args.model), size), work / f"yolov8n-seg-{size}-fp32.onnx")
    calibration = calibration_images(args.calibration, args.count)
    rows = [Row("ONNX Runtime fp32", {"path": str(fp32), "backend": "onnxruntime"})]
    shared = quantisation_form(SHARED_INT8) if SHARED_INT8.is_file() else "missing"
    if args.no_qoperator:
        rows.append(Row("ONNX Runtime int8 QOperator", {}, note=f"skipped (--no-qoperator; {SHARED_INT8.name} is "
                                                                f"{shared}, not QOperator)"))
    else:
        t0 = time.perf_counter()
        qop = quantize_for_cpu(fp32, work / f"yolov8n-seg-{size}-int8-qoperator.onnx", calibration, progress=False)
        log.info("QOperator %d made in %.0f s", size, time.perf_counter() - t0)
        rows.append(Row("ONNX Runtime int8 QOperator", {"path": str(qop), "backend": "onnxruntime"},
                        note=f"made by quantize_for_cpu ({SHARED_INT8.name} is {shared})"))
    rows.append(Row("OpenVINO f32", {"path": str(fp32), **_openvino("f32")}))
    rows.append(Row("OpenVINO bf16", {"path": str(fp32), **_openvino("bf16")}))
    try:
        result = quantize_openvino(fp32, work / f"yolov8n-seg-{size}-int8.xml", args.calibration, count=args.count,
                                   threads=args.threads)
        log.info("NNCF %d made in %.0f s; %s", size, result.seconds, result.gate.one_line())
        ir = str(result.path)
        rows.append(Row("OpenVINO int8 NNCF (float parts bf16)", {"path": ir, **_openvino("bf16")}))
        rows.append(Row("OpenVINO int8 NNCF (float parts f32)", {"path": ir, **_openvino("f32")}))
    except EdgesegError as exc:
        rows.append(Row("OpenVINO int8 NNCF", {}, note=f"refused: {exc}"))
    return rows


def raw_latency(rows: list[Row], images: Path, count: int, threads: int) -> None:
    """Median ``infer`` time of each row over the same letterboxed images, interleaved."""
    live = [r for r in rows if r.model]
    models: list[Model] = []
    try:
        for r in live:
            models.append(open_model(_config(r, threads)))
            r.provider = models[-1].backend.info.provider
        spec = models[0].spec
        pre = Preprocessor(spec.normalization, pool_size=1)
        tensors = []
        for p in sorted(images.glob("*.jpg"))[:count]:
            image, _ = decode_image(p)
            pooled = pre.acquire(spec.input_size)
            if image is None or pooled is None:
                continue
            pre.fill(image, pooled)
            tensors.append(pooled.copy())
            pre.release(pooled)
        for m in models:
            for _ in range(WARMUP_RUNS):
                m.backend.infer(tensors[0])
        times: list[list[float]] = [[] for _ in models]
        for x in tensors:
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                m.backend.infer(x)
                times[i].append((time.perf_counter() - t0) * 1e3)
        for r, t in zip(live, times):
            r.raw_ms = statistics.median(t)
    finally:
        for m in models:
            m.close()


def end_to_end(row: Row, images: Path, frames: int, threads: int) -> None:
    config = _config(row, threads, {"source": {"uri": str(images)}})
    report = run_bench(config, frames, warmup=WARMUP_RUNS, sequential=False)
    row.fps = report.pipeline_fps


def accuracy(row: Row, images: Path, annotations: Path, threads: int, out: Path) -> None:
    config = _config(row, threads, {"postprocess": dict(EVAL_POSTPROCESS)})
    report = evaluate(config, images, annotations, out, progress=False)
    row.box_map, row.mask_map = report.box_map, report.mask_map


#: Runs a command as the only child of a fresh Python and prints its exit status and peak RSS (KB):
#: ``RUSAGE_CHILDREN`` reports the largest child a process ever waited for, so only a parent with
#: no other children gives each row its own figure.
_RSS_PROBE = ("import resource, subprocess, sys; "
              "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
              "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss(row: Row, images: Path, threads: int, work: Path) -> None:
    """Peak RSS of ``edgeseg run`` over the images in a child process, a fresh OpenVINO cache."""
    m = row.model
    cmd = [sys.executable, "-m", "edgeseg", "run", "--model", m["path"], "--source", str(images),
           "--sink", f"jsonl:{work / 'rss.jsonl'}", "--threads", str(threads), "--backend", m["backend"],
           "--log-level", "error"]
    if m["backend"] == "openvino":
        cmd += ["--ov-precision", m["openvino"]["precision"]]
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = subprocess.run([sys.executable, "-c", _RSS_PROBE, *cmd], env=env, capture_output=True, text=True)
    fields = proc.stdout.split()
    if proc.returncode or len(fields) != 2 or fields[0] != "0":
        lines = proc.stderr.strip().splitlines()
        row.errors.append(f"run exited {fields[0] if fields else proc.returncode}: {lines[-1] if lines else ''}")
        return
    row.rss_mb = int(fields[1]) / 1024


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[int, list[Row]]) -> str:
    lines = ["| size | runtime, form | raw inference ms | end-to-end FPS | box mAP | mask mAP | peak RSS of run MB | "
             "runs on |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for size, rows in results.items():
        for r in rows:
            lines.append(f"| {size} | {r.name} | {_fmt(r.raw_ms, '.1f')} | {_fmt(r.fps, '.1f')} | "
                         f"{_fmt(r.box_map, '.3f')} | {_fmt(r.mask_map, '.3f')} | {_fmt(r.rss_mb, '.0f')} | "
                         f"{r.provider or '-'} |")
            if r.note:
                notes.append(f"- {size} {r.name}: {r.note}")
            notes.extend(f"- {size} {r.name}: {e}" for e in r.errors)
    return "\n".join(lines + ([""] + notes if notes else []))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="dynamic fp32 ONNX")
    p.add_argument("--sizes", default="320,640", help="input sizes, comma-separated (default %(default)s)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--count", type=int, default=300, help="calibration images (at most what the folder holds)")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="evaluation images")
    p.add_argument("--annotations", type=Path, default=DEFAULT_ANNOTATIONS)
    p.add_argument("--frames", type=int, default=158, help="frames of the end-to-end run")
    p.add_argument("--raw-images", type=int, default=DEFAULT_RAW_IMAGES, help="images timed per row")
    p.add_argument("--no-qoperator", action="store_true", help="skip making edgeseg's QOperator int8 (about 60 s)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak RSS runs")
    p.add_argument("--keep", type=Path, help="keep the files made in this folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    import nncf  # noqa: PLC0415 - quiet its per-operation INFO lines

    nncf.set_log_level(logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-openvino-"))
    results: dict[int, list[Row]] = {}
    t0 = time.perf_counter()
    try:
        for size in sizes:
            rows = build_rows(size, work, args)
            raw_latency(rows, args.images, args.raw_images, args.threads)
            for r in rows:
                if not r.model:
                    continue
                for step in ("fps", "map", "rss"):
                    try:
                        if step == "fps":
                            end_to_end(r, args.images, args.frames, args.threads)
                        elif step == "map":
                            accuracy(r, args.images, args.annotations, args.threads, work / "results.json")
                        elif not args.no_rss:
                            peak_rss(r, args.images, args.threads, work)
                    except EdgesegError as exc:
                        r.errors.append(f"{step}: {exc}")
                logging.getLogger("bench").info("%d %s: raw %s ms, %s FPS, box %s, mask %s, RSS %s MB%s", size, r.name,
                                                _fmt(r.raw_ms, ".1f"), _fmt(r.fps, ".1f"), _fmt(r.box_map, ".3f"),
                                                _fmt(r.mask_map, ".3f"), _fmt(r.rss_mb, ".0f"),
                                                "".join(f"; {e}" for e in r.errors))
            results[size] = rows
    finally:
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"# yolov8n-seg, {args.threads} threads, {args.frames} frames end-to-end, "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
