"""The engine self-test's reference, written into a bundle by the export (``edgeseg.bundle.selftest``).

    calibration images ─► the fp32 ONNX at the largest size picks the few with most instances
        ─► re-encoded into selftest/ ─► per resolution the fp32 ONNX (ONNX Runtime) decodes them
        ─► selftest/reference.json ─► every file the export made is judged against it

The reference is decoded by the runtime itself (``load_model``'s loader and the pipeline's
``FrameProcessor``, through ``edgeseg.bundle.selftest.decode_instances``), from the images as
they are stored in the bundle (read back after re-encoding), so a device that runs the same
images through the same code compares like with like.

``add_selftest_reference`` gives a bundle exported before self-tests its reference, copying
every other file byte for byte (engines/demo was updated so).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.bundle.manifest import MANIFEST_NAME, EngineRecord, Manifest, SelfTestRecord, load_manifest
from edgeseg.bundle.selftest import (
    JPEG_QUALITY,
    MAX_IMAGE_SIDE,
    REFERENCE_NAME,
    SELFTEST_DIR,
    SELFTEST_IMAGES,
    Form,
    InstanceRecord,
    Reference,
    ResolutionRecord,
    SelfTestResult,
    SettingsRecord,
    compare,
    decode_instances,
    engine_form,
    judge,
    read_images,
)
from edgeseg.bundle.verify import integrity_problems
from edgeseg.errors import EdgesegError, ExportError
from edgeseg.model import Model, open_engine
from edgeseg.sources.images import decode_image
from edgeseg.structures import ImageArray
from export.bundle_writer import BundleWriter

log = logging.getLogger(__name__)

#: Candidate images looked at per self-test image kept: the fp32 model runs on this many spread
#: over the folder, and the ones with most instances above the score floor are kept, so that
#: four images hold enough instances to judge (an empty street scene tests nothing).
CANDIDATES_PER_IMAGE = 4

#: Loads one file of the bundle being written at one size (the caller closes the model).
Loader = Callable[[str, int], Model]


@dataclass(frozen=True)
class FormToCheck:
    """A file of the bundle to judge against the reference."""

    file: str
    size: int
    form: Form


@dataclass(frozen=True)
class References:
    """What ``write_references`` staged: the manifest record, the files (name -> sha256) and
    the verdict on every file checked."""

    record: SelfTestRecord
    files: dict[str, str]
    results: dict[str, SelfTestResult]

    @property
    def failed(self) -> list[SelfTestResult]:
        return [r for r in self.results.values() if not r.passed]


def selftest_image_bytes(path: Path) -> bytes:
    """``path`` decoded, shrunk to ``MAX_IMAGE_SIDE`` (area interpolation) and JPEG-encoded."""
    image, why = decode_image(path)
    if image is None:
        raise ExportError(f"self-test image {path}: {why}")
    h, w = image.shape[:2]
    scale = MAX_IMAGE_SIDE / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ExportError(f"self-test image {path}: OpenCV could not encode it as JPEG")
    return bytes(data.tobytes())


def _stored_name(index: int, source: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", source.stem)[:40] or "image"
    return f"{SELFTEST_DIR}/{index}-{stem}.jpg"


def choose_images(model: Model, candidates: Sequence[Path], count: int) -> list[Path]:
    """The ``count`` images of ``candidates`` (spread evenly, ``CANDIDATES_PER_IMAGE`` per image
    kept) on which ``model`` finds most instances above the floor; in folder order."""
    settings = SettingsRecord.default()
    picks = np.linspace(0, len(candidates) - 1, min(len(candidates), count * CANDIDATES_PER_IMAGE))
    spread = [candidates[i] for i in sorted(set(picks.round().astype(int).tolist()))]
    decoded = []
    for p in spread:
        image, _ = decode_image(p)
        if image is not None:
            decoded.append((str(p), image))
    found = decode_instances(model, decoded, settings.postprocess())
    strong = {name: sum(1 for r in recs if r.score >= settings.score_floor) for name, recs in found.items()}
    order = sorted(range(len(decoded)), key=lambda i: -strong[decoded[i][0]])[:count]  # stable: ties keep order
    return [Path(decoded[i][0]) for i in sorted(order)]


def _run(load: Loader, file: str, size: int, images: Sequence[tuple[str, ImageArray]],
         settings: SettingsRecord) -> dict[str, list[InstanceRecord]]:
    model = load(file, size)
    try:
        return decode_instances(model, images, settings.postprocess())
    finally:
        model.close()


def write_references(
    writer: BundleWriter,
    fp32: Mapping[int, str],
    forms: Sequence[FormToCheck],
    load: Loader,
    candidates: Sequence[Path],
    made_with: str,
    count: int = SELFTEST_IMAGES,
) -> References:
    """Stage the self-test images and reference for the fp32 ONNX of every size (``fp32``: size ->
    file), then judge every file of ``forms`` against it. Nothing is dropped here: the caller
    decides what a failing form means."""
    if not candidates:
        raise ExportError("self-test: expected candidate images, got none")
    settings = SettingsRecord.default()
    largest = max(fp32)
    model = load(fp32[largest], largest)
    try:
        chosen = choose_images(model, candidates, count)
    finally:
        model.close()
    files: dict[str, str] = {}
    names = []
    for i, path in enumerate(chosen):
        name = _stored_name(i, path)
        files[name] = writer.write(name, selftest_image_bytes(path))[0]
        names.append(name)
    images = read_images(writer.staging, names)  # as stored: what a device will decode
    resolutions = {size: ResolutionRecord(made_by=file, images=_run(load, file, size, images, settings))
                   for size, file in sorted(fp32.items())}
    results: dict[str, SelfTestResult] = {}
    for f in forms:
        try:
            output = _run(load, f.file, f.size, images, settings)
        except EdgesegError as exc:
            results[f.file] = SelfTestResult(f.file, f.size, f.form, None, error=str(exc))
            continue
        figures = compare(resolutions[f.size].images, output, settings.score_floor, settings.match_iou)
        results[f.file] = judge(f.file, f.size, f.form, figures)
    reference = Reference(made_with=made_with, settings=settings, resolutions=resolutions,
                          export_checks={file: r.one_line() for file, r in results.items()})
    files[REFERENCE_NAME] = writer.write(REFERENCE_NAME, reference.to_json().encode("utf-8"))[0]
    for r in results.values():
        (log.info if r.passed else log.error)("%s", r.one_line())
    record = SelfTestRecord(reference=REFERENCE_NAME, images=names, resolutions=sorted(fp32))
    return References(record, files, results)


def _ort_version() -> str:
    import onnxruntime  # noqa: PLC0415

    return str(onnxruntime.__version__)


def add_selftest_reference(
    bundle: Path, images: Sequence[Path], count: int = SELFTEST_IMAGES, threads: int = 0
) -> tuple[Manifest, References]:
    """Give an existing bundle a (new) self-test reference made from ``images``.

    Every other file is copied byte for byte into a staging copy, the reference is made from
    the bundle's fp32 ONNX files, every ONNX Runtime engine is judged, and only when all pass
    does the staging copy replace the bundle (manifest: ``selftest`` and ``extra_files`` only).
    """
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    problems = integrity_problems(bundle, manifest)
    if problems:
        raise ExportError(f"bundle {bundle}: {'; '.join(problems)}")
    fp32 = {max(e.resolution): e.file for e in manifest.engines if e.precision == "fp32" and e.runtime == "onnxruntime"}
    if not fp32:
        raise ExportError(f"bundle {bundle}: no fp32 ONNX engine to make a self-test reference from")
    by_file: dict[str, EngineRecord] = {e.file: e for e in manifest.engines}
    with BundleWriter(bundle) as writer:
        for src in sorted(bundle.rglob("*")):
            rel = src.relative_to(bundle).as_posix()
            if src.is_file() and rel != MANIFEST_NAME and not rel.startswith(f"{SELFTEST_DIR}/"):
                shutil.copyfile(src, writer.path(rel))

        def load(file: str, size: int) -> Model:
            return open_engine(writer.staging, manifest, by_file[file], threads=threads, device="cpu")

        forms = [FormToCheck(e.file, max(e.resolution), engine_form(e)) for e in manifest.engines
                 if e.runtime == "onnxruntime" and max(e.resolution) in fp32]
        refs = write_references(writer, fp32, forms, load, images, f"onnxruntime {_ort_version()}", count)
        if refs.failed:
            raise ExportError(f"bundle {bundle}: not updated: " + "; ".join(r.one_line() for r in refs.failed))
        extra = {k: v for k, v in manifest.extra_files.items() if not k.startswith(f"{SELFTEST_DIR}/")}
        updated = manifest.model_copy(update={"extra_files": {**extra, **refs.files}, "selftest": refs.record})
        writer.commit(updated)
    return updated, refs
