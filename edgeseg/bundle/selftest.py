"""Engine self-test: an engine serves only once its decoded instances match the fp32 reference.

No test on the workstation can see what goes wrong on the device: a bad INT8 build, a driver
bug, a numpy/TensorRT mismatch. So a bundle carries, besides its engines, a few calibration
images and the instances its fp32 ONNX decoded on them through ONNX Runtime (the twin), per
resolution. Before an engine serves (install, build, load) it runs the same images through the
runtime's own frame path (``FrameProcessor``: letterbox, backend, decode, postprocess) and its
instances are compared with the reference. A failing engine is refused with its figures in one
line, and the caller falls back to the next engine.

Layout in the bundle (every file also in the manifest's ``extra_files``, so hash-verified)::

    selftest/reference.json    settings, then per resolution per image the reference instances
    selftest/000.jpg ...       the images (re-encoded, longest side <= 640)

The comparison (``compare``): per image and class, reference instances are matched greedily in
order of descending score to the unmatched output instance of highest box IoU (at least
``MATCH_IOU``). Greedy is what COCOeval does; after NMS two instances of one class rarely
overlap enough for a different assignment to exist, so the optimal (Hungarian) match would give
the same pairs at the cost of scipy, which the runtime does not ship. Figures: the share of
reference instances above ``SCORE_FLOOR`` that found a match (recall), the share of output
instances above the floor that matched one (precision), mean box and mask IoU and mean and
largest score difference of the pairs. The floor sits above the confidence threshold both sides
were decoded with, so an instance that merely drifts across the threshold is not a miss.

Tolerances are per precision and quantisation form (``TOLERANCES``), set from measurement
(``benchmarks/selftest_tolerances.py``, docs/selftest.md).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Final, List, Literal, Optional, Tuple

import numpy as np
import numpy.typing as npt
from pycocotools import mask as coco_mask
from pydantic import Field, ValidationError

from edgeseg.bundle.manifest import EngineRecord, Manifest
from edgeseg.bundle.verify import file_problem
from edgeseg.config.errors import describe_validation_error
from edgeseg.errors import BundleError, EdgesegError
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.sinks.mask_codec import rle_from_crop
from edgeseg.sources.images import decode_image
from edgeseg.strict import StrictModel
from edgeseg.structures import ImageArray, Instances

if TYPE_CHECKING:
    from edgeseg.model import Model

log = logging.getLogger(__name__)

SELFTEST_DIR: Final = "selftest"
REFERENCE_NAME: Final = f"{SELFTEST_DIR}/reference.json"
REFERENCE_FORMAT: Final = "edgeseg-selftest"
REFERENCE_VERSION: Final = 1
#: Images a bundle carries for its self-test: enough instances to judge (the 4 COCO train images
#: chosen for the yolov8n-seg hold 23 instances above the floor at 640 and 13 at 320, the demo's
#: 25) at the cost of four inferences per engine.
SELFTEST_IMAGES: Final = 4
#: Longest side of a self-test image in the bundle; the network input is at most 1280, and 640
#: keeps the files small (JPEG, ~50 KB each).
MAX_IMAGE_SIDE: Final = 640
JPEG_QUALITY: Final = 95

#: Postprocessing of reference and test, fixed and written into the reference so that a change
#: of the runtime's defaults cannot make a passing engine fail. Hard NMS: Soft-NMS decays scores
#: by overlap, which would mix NMS noise into the score comparison.
SELFTEST_SETTINGS: Final = PostprocessSettings(
    conf_threshold=0.25, nms="hard", iou_threshold=0.7, max_detections=100, multi_label=False, masks=True,
    mask_threshold=0.5,
)
#: Reference instances scoring at least this must be found (recall), output instances scoring at
#: least this must match one (precision). Both sides keep instances down to the 0.25 confidence
#: threshold, so a score may drift by 0.15 before a matched instance becomes a miss.
SCORE_FLOOR: Final = 0.4
#: Least box IoU for an output instance to be the reference instance's counterpart (COCO's AP50).
MATCH_IOU: Final = 0.5

Form = Literal["fp32", "fp16", "int8-qdq", "int8-qoperator"]


@dataclass(frozen=True)
class Tolerance:
    """What an engine of one form must reach against the fp32 reference.

    Attributes:
        min_recall: share of reference instances above the floor that it finds.
        min_precision: share of its instances above the floor that match a reference instance.
        min_box_iou, min_mask_iou: mean IoU of the matched pairs.
        max_score_diff: mean absolute score difference of the matched pairs.
    """

    min_recall: float
    min_precision: float
    min_box_iou: float
    min_mask_iou: float
    max_score_diff: float


#: Per form, set from ``benchmarks/selftest_tolerances.py`` (docs/selftest.md has the table and
#: the reasons). int8 (both forms): worst correct engine measured recall 0.957, box IoU 0.953,
#: mask IoU 0.952, mean score difference 0.075 (the 640 yolov8n-seg's Q/DQ file), each bound well
#: beyond that; every broken int8 file measured fails on recall (0.28 to 0.74). fp32: ONNX
#: Runtime agrees with itself to 1e-5, but TensorRT's fp32 engines run TF32 (fp16's 10-bit
#: mantissa) on Ampere and later, so fp32 allows what fp16-rounded convolutions measured (box and
#: mask IoU 0.999) many times over while still refusing every broken fp32 file measured (mask IoU
#: 0.82 to 0.946, box IoU 0.963, score difference 0.039). fp16 cannot run here (no GPU, no fp16 CPU
#: kernels); the emulation measured as fp32 did, and real fp16 engines also compute activations in
#: fp16, so fp16 sits between fp32 and int8.
TOLERANCES: Final[Mapping[str, Tolerance]] = {
    "fp32": Tolerance(min_recall=0.90, min_precision=0.90, min_box_iou=0.97, min_mask_iou=0.95,
                      max_score_diff=0.02),
    "fp16": Tolerance(min_recall=0.90, min_precision=0.90, min_box_iou=0.94, min_mask_iou=0.92,
                      max_score_diff=0.03),
    "int8-qdq": Tolerance(min_recall=0.80, min_precision=0.80, min_box_iou=0.88, min_mask_iou=0.85,
                          max_score_diff=0.12),
    "int8-qoperator": Tolerance(min_recall=0.80, min_precision=0.80, min_box_iou=0.88, min_mask_iou=0.85,
                                max_score_diff=0.12),
}


def form_of(precision: str, quantization: Optional[str]) -> Form:
    """The tolerance row of a precision and, for int8, how it was quantised.

    A TensorRT int8 engine is built from the Q/DQ file; an int8 record without a quantisation
    (older manifests) gets the QOperator row.
    """
    if precision == "int8":
        return "int8-qdq" if quantization == "qdq-symmetric" else "int8-qoperator"
    return "fp16" if precision == "fp16" else "fp32"


def engine_form(engine: EngineRecord) -> Form:
    return form_of(engine.precision, engine.quantization)


# -- the reference file ------------------------------------------------------------------------


class RleRecord(StrictModel):
    """A COCO compressed RLE over the whole image."""

    size: Tuple[int, int]
    counts: str


class InstanceRecord(StrictModel):
    """One decoded instance, in original-image pixels."""

    class_id: int = Field(ge=0)
    score: float = Field(ge=0, le=1)
    box: Tuple[float, float, float, float]
    mask: RleRecord


class SettingsRecord(StrictModel):
    """The postprocessing the reference was decoded with (the test uses the same)."""

    conf_threshold: float = Field(gt=0, le=1)
    nms: Literal["gaussian", "linear", "hard"]
    iou_threshold: float = Field(gt=0, le=1)
    max_detections: int = Field(ge=1)
    mask_threshold: float = Field(gt=0, lt=1)
    score_floor: float = Field(gt=0, le=1)
    match_iou: float = Field(gt=0, le=1)

    def postprocess(self) -> PostprocessSettings:
        return PostprocessSettings(
            conf_threshold=self.conf_threshold, nms=self.nms, iou_threshold=self.iou_threshold,
            max_detections=self.max_detections, multi_label=False, masks=True, mask_threshold=self.mask_threshold,
        )

    @classmethod
    def default(cls) -> SettingsRecord:
        s = SELFTEST_SETTINGS
        return cls(conf_threshold=s.conf_threshold, nms=s.nms, iou_threshold=s.iou_threshold,
                   max_detections=s.max_detections, mask_threshold=s.mask_threshold, score_floor=SCORE_FLOOR,
                   match_iou=MATCH_IOU)


class ResolutionRecord(StrictModel):
    """The reference at one input size: which file made it, and per image its instances."""

    made_by: str = Field(description="the bundle's fp32 ONNX of this size")
    images: Dict[str, List[InstanceRecord]]


class Reference(StrictModel):
    """``selftest/reference.json``."""

    format: Literal["edgeseg-selftest"] = REFERENCE_FORMAT
    version: Literal[1] = REFERENCE_VERSION
    made_with: str = Field(description="runtime that decoded the reference, e.g. 'onnxruntime 1.31.1'")
    settings: SettingsRecord
    resolutions: Dict[int, ResolutionRecord] = Field(min_length=1)
    #: One line per file the export checked against this reference, file -> result.
    export_checks: Dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1) + "\n"


def parse_reference(text: str, origin: str) -> Reference:
    """Validate reference JSON, or a one-line BundleError naming ``origin``."""
    try:
        return Reference.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{origin}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except ValidationError as exc:
        raise BundleError(f"{origin}: {describe_validation_error(exc)}") from None


def instance_records(instances: Instances) -> List[InstanceRecord]:
    """The instances of one image as reference records (RLE straight from the crops)."""
    out: List[InstanceRecord] = []
    for i in range(len(instances)):
        if instances.has_masks:
            rle = rle_from_crop(instances.masks[i], instances.mask_boxes[i], instances.image_size)
        else:  # masks are always on in the self-test settings; an empty mask keeps the record valid
            h, w = instances.image_size
            rle = rle_from_crop(np.zeros((0, 0), np.bool_), (0, 0, 0, 0), (h, w))
        x0, y0, x1, y1 = (round(float(v), 2) for v in instances.boxes[i])
        out.append(InstanceRecord(
            class_id=int(instances.class_ids[i]), score=round(float(instances.scores[i]), 5),
            box=(x0, y0, x1, y1), mask=RleRecord(size=(rle["size"][0], rle["size"][1]), counts=rle["counts"]),
        ))
    return out


# -- the comparison ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """How one engine's instances compare with the reference over all self-test images.

    Attributes:
        reference_instances: reference instances scoring at least the floor.
        matched: of those, how many found a counterpart.
        output_instances: the engine's instances scoring at least the floor.
        extra: of those, how many match no reference instance (of any score).
        box_iou, mask_iou: mean IoU of the pairs whose reference scores at least the floor
            (1.0 when there is no pair).
        score_diff, score_diff_max: mean and largest absolute score difference of those pairs.
        pairs: how many pairs the means are over.
    """

    reference_instances: int
    matched: int
    output_instances: int
    extra: int
    box_iou: float
    mask_iou: float
    score_diff: float
    score_diff_max: float
    pairs: int

    @property
    def recall(self) -> float:
        return self.matched / self.reference_instances if self.reference_instances else 1.0

    @property
    def precision(self) -> float:
        return 1.0 - self.extra / self.output_instances if self.output_instances else 1.0


def box_iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), xyxy; (n, m)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _mask_iou(a: RleRecord, b: RleRecord) -> float:
    if tuple(a.size) != tuple(b.size):
        return 0.0
    rle_a = {"size": list(a.size), "counts": a.counts}
    rle_b = {"size": list(b.size), "counts": b.counts}
    return float(np.asarray(coco_mask.iou([rle_a], [rle_b], [0])).reshape(-1)[0])


def match(
    reference: Sequence[InstanceRecord], output: Sequence[InstanceRecord], match_iou: float = MATCH_IOU
) -> List[Tuple[int, int]]:
    """Pairs (reference index, output index) of one image: per class, greedy by descending
    reference score, each to the unmatched output instance of highest box IoU >= ``match_iou``."""
    pairs: List[Tuple[int, int]] = []
    for cls in sorted({r.class_id for r in reference}):
        ref_i = sorted((i for i, r in enumerate(reference) if r.class_id == cls), key=lambda i: -reference[i].score)
        out_i = [j for j, o in enumerate(output) if o.class_id == cls]
        if not out_i:
            continue
        ious = box_iou(np.array([reference[i].box for i in ref_i], np.float64),
                       np.array([output[j].box for j in out_i], np.float64))
        free = np.ones(len(out_i), np.bool_)
        for row, i in enumerate(ref_i):
            candidates = np.where(free, ious[row], -1.0)
            best = int(np.argmax(candidates))
            if candidates[best] >= match_iou:
                free[best] = False
                pairs.append((i, out_i[best]))
    return pairs


def compare(
    reference: Mapping[str, Sequence[InstanceRecord]],
    output: Mapping[str, Sequence[InstanceRecord]],
    score_floor: float = SCORE_FLOOR,
    match_iou: float = MATCH_IOU,
) -> Figures:
    """The figures of ``output`` against ``reference`` (both: image name -> instances)."""
    ref_n = matched = out_n = extra = 0
    box_ious: List[float] = []
    mask_ious: List[float] = []
    diffs: List[float] = []
    for name, ref in reference.items():
        out = output.get(name, [])
        pairs = match(ref, out, match_iou)
        ref_matched = {i for i, _ in pairs}
        out_matched = {j for _, j in pairs}
        strong = [i for i, r in enumerate(ref) if r.score >= score_floor]
        ref_n += len(strong)
        matched += sum(1 for i in strong if i in ref_matched)
        shown = [j for j, o in enumerate(out) if o.score >= score_floor]
        out_n += len(shown)
        extra += sum(1 for j in shown if j not in out_matched)
        for i, j in pairs:
            if ref[i].score < score_floor:
                continue
            pair = box_iou(np.array([ref[i].box], np.float64), np.array([out[j].box], np.float64))
            box_ious.append(float(pair[0, 0]))
            mask_ious.append(_mask_iou(ref[i].mask, out[j].mask))
            diffs.append(abs(ref[i].score - out[j].score))
    return Figures(
        reference_instances=ref_n, matched=matched, output_instances=out_n, extra=extra,
        box_iou=float(np.mean(box_ious)) if box_ious else 1.0,
        mask_iou=float(np.mean(mask_ious)) if mask_ious else 1.0,
        score_diff=float(np.mean(diffs)) if diffs else 0.0,
        score_diff_max=float(np.max(diffs)) if diffs else 0.0,
        pairs=len(diffs),
    )


def shortfalls(figures: Figures, tolerance: Tolerance) -> Tuple[str, ...]:
    """Each figure outside ``tolerance``, worded for the one-line message (empty: it passes)."""
    f, t = figures, tolerance
    out: List[str] = []
    if f.recall < t.min_recall:
        out.append(f"matched {f.recall:.0%} of {f.reference_instances} reference instances (need {t.min_recall:.0%})")
    if f.precision < t.min_precision:
        out.append(f"{f.extra} of its {f.output_instances} instances match none "
                   f"({1 - f.precision:.0%}, at most {1 - t.min_precision:.0%})")
    if f.box_iou < t.min_box_iou:
        out.append(f"box IoU {f.box_iou:.2f} (need {t.min_box_iou:.2f})")
    if f.mask_iou < t.min_mask_iou:
        out.append(f"mask IoU {f.mask_iou:.2f} (need {t.min_mask_iou:.2f})")
    if f.score_diff > t.max_score_diff:
        out.append(f"score difference {f.score_diff:.3f} (at most {t.max_score_diff:.3f})")
    return tuple(out)


@dataclass(frozen=True)
class SelfTestResult:
    """The verdict on one engine.

    Attributes:
        engine: the engine's file in the bundle.
        resolution: the input size tested.
        form: its tolerance row (``TOLERANCES``).
        figures: the comparison, None when the engine could not run the images.
        failures: the figures outside the tolerance, worded for ``one_line``.
        error: why the engine could not run the images ("" when it could).
    """

    engine: str
    resolution: int
    form: str
    figures: Optional[Figures]
    failures: Tuple[str, ...] = ()
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and not self.failures

    def one_line(self) -> str:
        """E.g. ``self-test failed: demo-320-int8.engine matched 61% of 23 reference instances
        (need 85%), mask IoU 0.71 (need 0.80)``."""
        if self.error:
            return f"self-test failed: {self.engine} could not run the self-test images ({self.error})"
        f = self.figures
        assert f is not None
        if self.failures:
            lead = "" if self.failures[0].startswith("matched ") else \
                f"matched {f.recall:.0%} of {f.reference_instances} reference instances, "
            return f"self-test failed: {self.engine} {lead}{', '.join(self.failures)} ({self.form} tolerances)"
        return (f"self-test passed: {self.engine} matched {f.recall:.0%} of {f.reference_instances} reference "
                f"instances, {f.extra} extra, box IoU {f.box_iou:.2f}, mask IoU {f.mask_iou:.2f}, "
                f"score difference {f.score_diff:.3f} ({self.form} tolerances)")


def judge(file: str, size: int, form: Form, figures: Figures) -> SelfTestResult:
    """The verdict on ``figures`` by the tolerance of ``form``."""
    return SelfTestResult(file, size, form, figures, shortfalls(figures, TOLERANCES[form]))


# -- running the images ------------------------------------------------------------------------


def decode_instances(
    model: Model, images: Sequence[Tuple[str, ImageArray]], settings: PostprocessSettings
) -> Dict[str, List[InstanceRecord]]:
    """The instances ``model`` finds on ``images`` (name, BGR image) through the runtime's own frame
    path: the ``FrameProcessor`` the pipeline runs (letterbox, backend, decode, postprocess)."""
    from edgeseg.pipeline.processor import FrameProcessor  # noqa: PLC0415 - it imports edgeseg.model
    from edgeseg.postprocess import Postprocessor  # noqa: PLC0415
    from edgeseg.preprocess import Preprocessor  # noqa: PLC0415
    from edgeseg.structures import Frame  # noqa: PLC0415

    processor = FrameProcessor(model, Postprocessor(settings, model.spec.class_names),
                               Preprocessor(model.spec.normalization, pool_size=1))
    out: Dict[str, List[InstanceRecord]] = {}
    for i, (name, image) in enumerate(images):
        work = processor.prepare(Frame(image, i, "selftest", 0.0, name))
        assert work is not None  # a pool of one, released by infer: never exhausted
        result = processor.finish(processor.infer(work))
        out[name] = instance_records(result.instances)
    return out


def read_images(bundle_dir: Path, names: Sequence[str]) -> List[Tuple[str, ImageArray]]:
    """The self-test images of a bundle, decoded; BundleError naming one that does not decode."""
    out: List[Tuple[str, ImageArray]] = []
    for name in names:
        image, why = decode_image(bundle_dir / name)
        if image is None:
            raise BundleError(f"bundle {bundle_dir}: self-test image {name}: {why}")
        out.append((name, image))
    return out


@dataclass(frozen=True)
class _Material:
    reference: Reference
    images: Tuple[Tuple[str, ImageArray], ...]


def _read_material(bundle_dir: Path, manifest: Manifest) -> _Material:
    """The reference and images of a bundle, each file checked against its manifest sha256."""
    record = manifest.selftest
    assert record is not None
    for name in [record.reference, *record.images]:
        problem = file_problem(bundle_dir, name, manifest.extra_files[name])
        if problem is not None:
            raise BundleError(f"bundle {bundle_dir}: {problem}; refusing its self-test (re-flash the bundle)")
    path = bundle_dir / record.reference
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read ({exc})") from None
    reference = parse_reference(text, str(path))
    return _Material(reference, tuple(read_images(bundle_dir, record.images)))


def run_selftest(model: Model, material: _Material, engine: EngineRecord) -> Optional[SelfTestResult]:
    """Run and judge ``engine`` (loaded as ``model``); None when the reference lacks its size."""
    size = max(engine.resolution)
    at_size = material.reference.resolutions.get(size)
    if at_size is None:
        return None
    settings = material.reference.settings
    images = [(n, im) for n, im in material.images if n in at_size.images]
    try:
        output = decode_instances(model, images, settings.postprocess())
    except Exception as exc:  # noqa: BLE001 - any failure of the engine is its verdict, not a crash
        text = str(exc).strip().splitlines()
        return SelfTestResult(engine.file, size, engine_form(engine), None,
                              error=f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": "))
    figures = compare(at_size.images, output, settings.score_floor, settings.match_iou)
    return judge(engine.file, size, engine_form(engine), figures)


# -- the process-wide ledger: results cached per engine, counts for /metrics ---------------------


@dataclass(frozen=True)
class LedgerCounts:
    """A copy of the ledger's counters (what ``/metrics`` shows)."""

    runs: Dict[Tuple[str, str], int] = field(default_factory=dict)
    failures: Dict[str, int] = field(default_factory=dict)
    fallbacks: Dict[Tuple[str, str], int] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)


class SelfTestLedger:
    """The one owner of self-test results and counts in this process; thread-safe.

    Results are kept per (bundle directory, engine file, engine sha256), so the adaptive ladder,
    a reload or a second load of the same engine does not test it again; the references read
    from a bundle are kept likewise. Counts: runs by engine and verdict, failures by engine,
    fallbacks (refused engine -> serving engine), bundles loaded without a reference.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: Dict[Tuple[str, str, str], SelfTestResult] = {}
        self._material: Dict[Tuple[str, str], _Material] = {}
        self._runs: Counter[Tuple[str, str]] = Counter()
        self._failures: Counter[str] = Counter()
        self._fallbacks: Counter[Tuple[str, str]] = Counter()
        self._skipped: Counter[str] = Counter()

    @staticmethod
    def _key(bundle_dir: Path, engine: EngineRecord) -> Tuple[str, str, str]:
        return str(bundle_dir), engine.file, engine.sha256

    def cached(self, bundle_dir: Path, engine: EngineRecord) -> Optional[SelfTestResult]:
        with self._lock:
            return self._results.get(self._key(bundle_dir, engine))

    def record(self, bundle_dir: Path, engine: EngineRecord, result: SelfTestResult) -> None:
        with self._lock:
            self._results[self._key(bundle_dir, engine)] = result
            self._runs[(engine.file, "passed" if result.passed else "failed")] += 1
            if not result.passed:
                self._failures[engine.file] += 1

    def fallback(self, refused: str, serving: str) -> None:
        with self._lock:
            self._fallbacks[(refused, serving)] += 1

    def skipped(self, bundle: str) -> bool:
        """Count a load of ``bundle`` without a reference; True the first time (warn once)."""
        with self._lock:
            self._skipped[bundle] += 1
            return self._skipped[bundle] == 1

    def material(self, bundle_dir: Path, manifest: Manifest) -> _Material:
        record = manifest.selftest
        assert record is not None
        key = (str(bundle_dir), manifest.extra_files[record.reference])
        with self._lock:
            held = self._material.get(key)
        if held is None:
            held = _read_material(bundle_dir, manifest)
            with self._lock:
                self._material[key] = held
        return held

    def counts(self) -> LedgerCounts:
        with self._lock:
            return LedgerCounts(dict(self._runs), dict(self._failures), dict(self._fallbacks), dict(self._skipped))

    def clear(self) -> None:
        """Forget every result and count (tests)."""
        with self._lock:
            self._results.clear()
            self._material.clear()
            self._runs.clear()
            self._failures.clear()
            self._fallbacks.clear()
            self._skipped.clear()


LEDGER: Final = SelfTestLedger()


def check_loaded(model: Model, bundle_dir: Path, manifest: Manifest, engine: EngineRecord,
                 ledger: SelfTestLedger = LEDGER) -> Optional[SelfTestResult]:
    """The verdict on a loaded engine: from the ledger, or run now (and recorded and logged).

    None when the bundle has no reference (warned once per bundle) or none at the engine's size.
    BundleError when the reference or an image does not match its manifest hash.
    """
    if manifest.selftest is None:
        if ledger.skipped(manifest.name):
            log.warning("bundle %s: no self-test reference (exported before self-tests): its engines serve "
                        "untested; re-export it to add one", manifest.name)
        return None
    held = ledger.cached(bundle_dir, engine)
    if held is not None:
        return held
    result = run_selftest(model, ledger.material(bundle_dir, manifest), engine)
    if result is None:
        log.warning("bundle %s: the self-test reference has no %d resolution; %s serves untested",
                    manifest.name, max(engine.resolution), engine.file)
        return None
    ledger.record(bundle_dir, engine, result)
    if result.passed:
        log.info("bundle %s: %s", manifest.name, result.one_line())
    else:
        log.error("bundle %s: %s", manifest.name, result.one_line())
    return result


def describe_reference(manifest: Manifest) -> str:
    """One line on a bundle's self-test for ``edgeseg doctor`` and listings, e.g. ``reference
    outputs of 4 images at 320, 640`` or the warning for a bundle exported before self-tests."""
    record = manifest.selftest
    if record is None:
        return "no self-test reference (exported before self-tests): its engines serve untested; re-export it"
    sizes = ", ".join(str(r) for r in record.resolutions)
    return f"reference outputs of {len(record.images)} images at {sizes} ({record.reference})"


#: Loads one engine of a bundle as ``_load_bundle`` does (hash check, backend, spec).
EngineLoader = Callable[[Path, Manifest, EngineRecord], "Model"]


def selftest_engine(
    bundle_dir: Path,
    manifest: Manifest,
    engine: EngineRecord,
    *,
    loader: Optional[EngineLoader] = None,
    threads: int = 0,
    device: str = "auto",
    ledger: Optional[SelfTestLedger] = None,
) -> Optional[SelfTestResult]:
    """Load ``engine`` of the bundle at ``bundle_dir`` and run its self-test; None without a reference.

    The API for whatever makes or accepts an engine (``edgeseg engines build``, install): the
    engine is loaded by ``loader`` (default: ``edgeseg.model.open_engine``, the very loader of
    ``load_model``), its file relative to ``bundle_dir`` (``device/x.engine`` works), and its
    images decoded through the runtime's frame path; the model is closed afterwards. A load or
    run failure is a failed result (``error``), not an exception, except a self-test file that
    does not match its manifest hash (BundleError). With ``ledger`` the result is recorded
    there (counted on /metrics) and a cached verdict is reused; by default nothing is cached,
    since a builder tests a file it just wrote. Log or print ``result.one_line()``.
    """
    if manifest.selftest is None:
        return None
    material = (ledger or SelfTestLedger()).material(bundle_dir, manifest)
    if max(engine.resolution) not in material.reference.resolutions:
        return None
    if ledger is not None:
        held = ledger.cached(bundle_dir, engine)
        if held is not None:
            return held
    if loader is None:
        from edgeseg.model import open_engine  # noqa: PLC0415 - edgeseg.model imports this module

        def loader(d: Path, m: Manifest, e: EngineRecord) -> Model:
            return open_engine(d, m, e, threads=threads, device=device)

    try:
        model = loader(bundle_dir, manifest, engine)
    except EdgesegError as exc:
        result = SelfTestResult(engine.file, max(engine.resolution), engine_form(engine), None,
                                error=f"cannot load: {exc}")
    else:
        try:
            judged = engine
            if engine.runtime == "openvino":  # judged at the precision it computed in (bf16: fp16's row)
                from edgeseg.model import openvino_selftest_record  # noqa: PLC0415 - imports this module

                judged = openvino_selftest_record(engine, model.backend)
            ran = run_selftest(model, material, judged)
        finally:
            model.close()
        assert ran is not None  # the size is in the reference (checked above)
        result = ran
    if ledger is not None:
        ledger.record(bundle_dir, engine, result)
    return result

