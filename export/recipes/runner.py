"""Recipes: the whole export chain of a model kept in one YAML file, run stage by stage.

    edgeseg recipe run export/recipes/demo.yaml [--stage NAME ...] [--resume]
    edgeseg recipe check export/recipes/demo.yaml

A recipe is a list of named stages, each of one kind, run in order, each going file to file:

    synth    the synthetic shapes dataset (export.data.synthetic.write_dataset)
    train    edgeseg train (optionally with BN sparsity: network slimming's first phase)
    distill  edgeseg distill: a student against a teacher (optionally with BN sparsity; with
             ``weights`` of a pruned model and its unpruned self as the teacher: fine-tuning)
    prune    edgeseg prune: channels by BN scale at a global ratio
    fold     edgeseg fold: Conv+BN folded, checked, written as ONNX
    export   edgeseg export: the engine bundle (the keys of an export recipe, export/recipe.py)
    eval     COCO box and mask mAP of a checkpoint, ONNX model or bundle on an annotated set

The whole file is validated before any stage runs: unknown keys (at any level), values out of
range (a prune ratio outside 0..0.9, say), duplicate stage names, and inputs that neither exist
nor are made by an earlier stage are each refused with one line.

Paths are relative to ``root``, itself relative to the recipe file's folder. Resuming: a stage
whose output exists and was made by the same configuration (its record under ``state``, by
default ``runs/<name>/.stages/<stage>.json``) is skipped with its recorded summary; one made by
another configuration is refused (delete its output and record to run it again); an unfinished
training run continues from its last.pt with ``--resume``. Every stage ends with one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from edgeseg.errors import ExportError
from edgeseg.strict import StrictModel

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
STAGE_KINDS = ("synth", "train", "distill", "prune", "fold", "export", "eval")


class SynthStage(StrictModel):
    out: str = Field(description="dataset folder (train/, val/, instances_*.json)")
    train: int = Field(1000, ge=0, le=1_000_000, description="training images")
    val: int = Field(200, ge=0, le=1_000_000, description="validation images")
    size: int = Field(320, ge=64, le=4096, description="square image side, pixels")
    seed: int = Field(0, ge=0, description="generator seed (same seed, same bytes)")


class StudentRun(StrictModel):
    """The flags of ``edgeseg train`` (and of the student of ``edgeseg distill``)."""

    data: str = Field(description="training set (COCO json or folder)")
    val: Optional[str] = Field(None, description="validation set")
    model_size: Literal["tiny", "small", "medium", "large"] = "tiny"
    imgsz: int = Field(320, ge=32, le=1280, multiple_of=32)
    epochs: int = Field(100, ge=1, le=100_000)
    batch: int = Field(16, ge=1, le=4096)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str = Field(description="run folder (last.pt, best.pt)")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Optional[float] = Field(None, gt=0, le=1)
    weight_decay: Optional[float] = Field(None, ge=0, le=1)
    warmup_steps: int = Field(300, ge=0)
    workers: int = Field(0, ge=0, le=64)
    seed: int = Field(0, ge=0)
    num_masks: int = Field(32, ge=1, le=256)
    max_steps: int = Field(0, ge=0)
    val_every: int = Field(1, ge=1)
    ema: bool = True
    augment: bool = True
    weights: Optional[str] = Field(None, description="start from this checkpoint (fine-tuning, pruned models)")
    sparsity: float = Field(0.0, ge=0, le=1, description="L1 strength on BN scales (0: off)")
    sparsity_schedule: Literal["constant", "linear", "cosine"] = "constant"


class TrainStage(StudentRun):
    pass


class DistillStage(StudentRun):
    teacher: str = Field(description="EdgeSeg checkpoint (.pt) or prototype-mask ONNX (.onnx)")
    label_free: bool = False
    classes: Optional[list[str]] = None
    kd_labels: float = Field(1.0, ge=0, le=1000)
    kd_cls: float = Field(1.0, ge=0, le=1000)
    kd_box: float = Field(5.0, ge=0, le=1000)
    kd_mask: float = Field(5.0, ge=0, le=1000)
    kd_feature: float = Field(0.0, ge=0, le=1000)
    teacher_conf: float = Field(0.3, gt=0, lt=1)
    pseudo_conf: float = Field(0.5, gt=0, lt=1)
    pseudo_iou: float = Field(0.6, gt=0, lt=1)
    max_instances: int = Field(64, ge=1, le=1000)
    teacher_threads: int = Field(0, ge=0, le=256)


class PruneStage(StrictModel):
    model: str = Field(description="checkpoint to prune")
    out: str = Field(description="pruned checkpoint (.pt)")
    ratio: float = Field(description="global channel ratio, 0 to 0.9")
    imgsz: Optional[int] = Field(None, ge=32, le=1280, multiple_of=32)
    round_to: int = Field(8, ge=0, le=64)
    data: Optional[str] = Field(None, description="images (folder or COCO dataset) for the pruned BN statistics")
    bn_images: int = Field(256, ge=1, le=100000)


class FoldStage(StrictModel):
    model: str = Field(description="checkpoint to fold")
    out: str = Field(description="ONNX file to write")
    imgsz: Optional[int] = Field(None, ge=32, le=1280, multiple_of=32)
    dynamic: bool = True


class EvalStage(StrictModel):
    model: str = Field(description="checkpoint (.pt), ONNX model or bundle folder")
    data: str = Field(description="annotated set (COCO json, or folder)")
    out: str = Field(description="JSON report to write")
    imgsz: Optional[int] = Field(None, ge=32, le=1280, multiple_of=32)


class Stage(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    synth: Optional[SynthStage] = None
    train: Optional[TrainStage] = None
    distill: Optional[DistillStage] = None
    prune: Optional[PruneStage] = None
    fold: Optional[FoldStage] = None
    export: Optional[dict[str, Any]] = Field(None, description="the keys of an export recipe (export/recipe.py)")
    eval: Optional[EvalStage] = None

    @model_validator(mode="after")
    def _one_kind(self) -> Stage:
        kinds = [k for k in STAGE_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a stage has exactly one of {', '.join(STAGE_KINDS)}; found "
                             f"{', '.join(kinds) or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STAGE_KINDS if getattr(self, k) is not None)

    @property
    def body(self) -> Any:
        return getattr(self, self.kind)


class Recipe(StrictModel):
    version: int = Field(RECIPE_VERSION, ge=RECIPE_VERSION, le=RECIPE_VERSION)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    root: str = Field(".", description="folder the paths are relative to (relative to the recipe file)")
    state: Optional[str] = Field(None, description="stage records folder (default runs/<name>/.stages)")
    threads: int = Field(0, ge=0, le=256, description="torch CPU threads (0: torch's default, all cores)")
    stages: list[Stage] = Field(min_length=1)


@dataclass(frozen=True)
class LoadedRecipe:
    path: Path
    recipe: Recipe
    root: Path

    def resolve(self, value: str) -> Path:
        """A recipe path, relative to the working directory when under it (so records and bundle
        manifests name ``runs/demo/...``, not this machine's absolute path)."""
        p = Path(value)
        full = p if p.is_absolute() else Path(os.path.normpath(self.root / p))
        cwd = Path.cwd()
        return full.relative_to(cwd) if full.is_relative_to(cwd) else full

    @property
    def state(self) -> Path:
        return self.resolve(self.recipe.state or f"runs/{self.recipe.name}/.stages")


def _location(loc: Sequence[Any], doc: dict[str, Any]) -> str:
    """'stages[2] (prune).ratio' from a pydantic error location."""
    parts: list[str] = []
    stages = doc.get("stages") if isinstance(doc, dict) else None
    for i, item in enumerate(loc):
        if isinstance(item, int):
            name = ""
            if i > 0 and loc[i - 1] == "stages" and isinstance(stages, list) and item < len(stages):
                stage = stages[item]
                name = f" ({stage.get('name')})" if isinstance(stage, dict) and stage.get("name") else ""
            parts[-1] = f"{parts[-1]}[{item}]{name}" if parts else f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe (every stage, paths, ranges); one-line ExportError on the first problem."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"recipe not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ExportError(f"recipe {path}: not readable YAML ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise ExportError(f"recipe {path}: expected a mapping with 'name' and 'stages'")
    try:
        recipe = Recipe.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = _location(first["loc"], doc)
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ExportError(f"recipe {path}: {loc or 'top level'}: {msg}") from None
    loaded = LoadedRecipe(path, recipe, Path(os.path.normpath(path.resolve().parent / recipe.root)))
    _check_semantics(loaded)
    return loaded


def _inputs_outputs(loaded: LoadedRecipe, stage: Stage) -> tuple[list[Path], list[Path]]:
    """The paths a stage reads and the paths it writes."""
    b, r = stage.body, loaded.resolve
    if stage.kind == "synth":
        return [], [r(b.out)]
    if stage.kind in ("train", "distill"):
        ins = [r(b.data)] + ([r(b.val)] if b.val else []) + ([r(b.weights)] if b.weights else [])
        if stage.kind == "distill":
            ins.append(r(b.teacher))
        return ins, [r(b.out)]
    if stage.kind == "prune":
        return [r(b.model)] + ([r(b.data)] if b.data else []), [r(b.out)]
    if stage.kind == "fold":
        return [r(b.model)], [r(b.out)]
    if stage.kind == "eval":
        return [r(b.model), r(b.data)], [r(b.out)]
    ins = [r(str(b[k])) for k in ("model", "calibration", "val_images", "val_annotations") if b.get(k)]
    return ins, [r(str(b["out"]))]


def _check_semantics(loaded: LoadedRecipe) -> None:
    """Range checks of the stage tools, unique names, and inputs that exist or are made earlier."""
    from export.recipe import ExportRecipe  # noqa: PLC0415

    names: set[str] = set()
    made: list[Path] = []
    where = f"recipe {loaded.path}"
    for stage in loaded.recipe.stages:
        if stage.name in names:
            raise ExportError(f"{where}: stage name {stage.name!r} used twice")
        names.add(stage.name)
        b = stage.body
        if stage.kind == "prune" and not 0.0 <= b.ratio <= 0.9:
            raise ExportError(f"{where}: stage {stage.name!r}: prune ratio {b.ratio}: expected a fraction of "
                              "channels from 0 to 0.9")
        if stage.kind == "export":
            try:
                ExportRecipe.model_validate(b)
            except ValidationError as exc:
                first = exc.errors()[0]
                msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
                raise ExportError(f"{where}: stage {stage.name!r}: export.{'.'.join(map(str, first['loc']))}: "
                                  f"{msg}") from None
        ins, outs = _inputs_outputs(loaded, stage)
        for p in ins:
            if not p.exists() and not any(p == m or m in p.parents for m in made):
                raise ExportError(f"{where}: stage {stage.name!r}: input {p} does not exist and no earlier stage "
                                  "makes it")
        made.extend(outs)


# -- stage records ---------------------------------------------------------------------------------


def _config(stage: Stage) -> dict[str, Any]:
    body = stage.body
    return dict(body) if isinstance(body, dict) else body.model_dump(mode="json")


def _hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def run_checkpoint(out: Path, validated: bool) -> Path:
    """A training run's result: best.pt (best validation) when validated, else last.pt."""
    return out / ("best.pt" if validated else "last.pt")


def _record_path(loaded: LoadedRecipe, stage: Stage) -> Path:
    return loaded.state / f"{stage.name}.json"


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_record(path: Path, stage: Stage, summary: str, seconds: float, extra: dict[str, Any]) -> None:
    config = _config(stage)
    doc = {"stage": stage.name, "kind": stage.kind, "config": config, "config_hash": _hash(config),
           "summary": summary, "seconds": round(seconds, 1),
           "finished": datetime.now(UTC).isoformat(timespec="seconds"), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _output_valid(loaded: LoadedRecipe, stage: Stage) -> bool:
    """The stage's output is there and readable."""
    b, r = stage.body, loaded.resolve
    try:
        if stage.kind == "synth":
            out = r(b.out)
            return all((out / f"instances_{s}.json").is_file() for s in ("train", "val"))
        if stage.kind in ("train", "distill"):
            from export.train.checkpoints import load_checkpoint  # noqa: PLC0415

            load_checkpoint(run_checkpoint(r(b.out), b.val is not None), check_weights=False)
            return True
        if stage.kind == "prune":
            from export.train.checkpoints import load_checkpoint  # noqa: PLC0415

            load_checkpoint(r(b.out), check_weights=False)
            return True
        if stage.kind == "export":
            from edgeseg.bundle.manifest import load_manifest  # noqa: PLC0415

            load_manifest(r(str(b["out"])))
            return True
        return r(b.out).is_file()
    except Exception:  # noqa: BLE001 - any failure to read means "not done"
        return False


def stage_status(loaded: LoadedRecipe, stage: Stage) -> tuple[str, str]:
    """("done", summary), ("stale", what differs), ("partial", why) or ("todo", "")."""
    record = _read_record(_record_path(loaded, stage))
    valid = _output_valid(loaded, stage)
    if record is not None and valid:
        if record.get("config_hash") == _hash(_config(stage)):
            return "done", str(record.get("summary", ""))
        old, new = record.get("config") or {}, _config(stage)
        keys = sorted(set(old) | set(new))
        diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
        return "stale", ", ".join(diffs[:3]) or "configuration changed"
    if stage.kind in ("train", "distill") and (loaded.resolve(stage.body.out) / "last.pt").is_file():
        return "partial", "an unfinished run (last.pt)"
    return "todo", ""


# -- running -----------------------------------------------------------------------------------------


def _train_config(loaded: LoadedRecipe, b: StudentRun) -> Any:
    from export.train.trainer import TrainConfig  # noqa: PLC0415

    r = loaded.resolve
    return TrainConfig(
        data=str(r(b.data)), val=str(r(b.val)) if b.val else None, model_size=b.model_size, imgsz=b.imgsz,
        epochs=b.epochs, batch=b.batch, device=b.device, out=str(r(b.out)), optimizer=b.optimizer, lr=b.lr,
        weight_decay=b.weight_decay, warmup_steps=b.warmup_steps, workers=b.workers, seed=b.seed,
        num_masks=b.num_masks, max_steps=b.max_steps, val_every=b.val_every, ema=b.ema, augment=b.augment,
        weights=str(r(b.weights)) if b.weights else None,
    )


def _run_synth(loaded: LoadedRecipe, b: SynthStage) -> tuple[str, dict[str, Any]]:
    from export.data.synthetic import write_dataset  # noqa: PLC0415

    splits = write_dataset(loaded.resolve(b.out), b.train, b.val, b.size, b.seed)
    text = "; ".join(f"{s.images} {s.split} images, {s.instances} instances" for s in splits)
    return f"synth: {loaded.resolve(b.out)}: {text} ({b.size}x{b.size}, seed {b.seed})", {}


def _metrics(result: Any) -> dict[str, Any]:
    m = result.metrics
    return {"parameters": result.parameters, "flops": result.flops,
            "metrics": m.as_dict() if m is not None else {}, "checkpoint": str(result.checkpoint)}


def _run_train(loaded: LoadedRecipe, b: TrainStage, resume: bool, progress: bool) -> tuple[str, dict[str, Any]]:
    from export.slim.sparsity import SCHEDULES, attach_sparsity, check_sparsity  # noqa: PLC0415
    from export.train.trainer import Trainer  # noqa: PLC0415

    check_sparsity(b.sparsity, b.sparsity_schedule)
    trainer = Trainer(_train_config(loaded, b), resume or None, progress)
    if b.sparsity > 0:
        attach_sparsity(trainer, b.sparsity, SCHEDULES[b.sparsity_schedule])
    result = trainer.fit()
    return result.summary_line(), _metrics(result)


def _run_distill(loaded: LoadedRecipe, b: DistillStage, resume: bool, progress: bool) -> tuple[str, dict[str, Any]]:
    from export.distill.distiller import DistillConfig, distill  # noqa: PLC0415
    from export.distill.losses import DistillWeights  # noqa: PLC0415

    weights = DistillWeights(labels=b.kd_labels, cls=b.kd_cls, box=b.kd_box, mask=b.kd_mask, feature=b.kd_feature,
                             conf=b.teacher_conf, max_instances=b.max_instances, pseudo_conf=b.pseudo_conf,
                             pseudo_iou=b.pseudo_iou)
    config = DistillConfig(teacher=str(loaded.resolve(b.teacher)), train=_train_config(loaded, b), weights=weights,
                           label_free=b.label_free, classes=tuple(b.classes) if b.classes else None,
                           sparsity=b.sparsity, sparsity_schedule=b.sparsity_schedule,
                           teacher_threads=b.teacher_threads)
    result = distill(config, resume or None, progress)
    extra = _metrics(result.train)
    extra["teacher_flops"] = result.teacher_flops
    return result.summary_line(), extra


def _run_prune(loaded: LoadedRecipe, b: PruneStage) -> tuple[str, dict[str, Any]]:
    from export.slim.prune import prune_checkpoint  # noqa: PLC0415

    result = prune_checkpoint(loaded.resolve(b.model), loaded.resolve(b.out), b.ratio, b.imgsz, b.round_to or None,
                              data=loaded.resolve(b.data) if b.data else None, bn_images=b.bn_images)
    rep = result.report
    return result.summary_line(), {"parameters": list(rep.parameters), "flops": list(rep.flops),
                                   "channels": list(rep.channels)}


def _run_fold(loaded: LoadedRecipe, b: FoldStage) -> tuple[str, dict[str, Any]]:
    from export.slim.fold import fold_checkpoint  # noqa: PLC0415

    result = fold_checkpoint(loaded.resolve(b.model), loaded.resolve(b.out), b.imgsz, b.dynamic)
    return result.summary_line(), {"max_relative_difference": result.report.max_relative_difference,
                                   "differences": result.report.differences}


def _run_export(loaded: LoadedRecipe, b: dict[str, Any], progress: bool) -> tuple[str, dict[str, Any]]:
    from dataclasses import replace  # noqa: PLC0415

    from export.pipeline import export_bundle  # noqa: PLC0415
    from export.recipe import build_options  # noqa: PLC0415

    doc = dict(b)
    for key in ("model", "out", "calibration", "val_images", "val_annotations"):
        if doc.get(key):
            doc[key] = str(loaded.resolve(str(doc[key])))
    result = export_bundle(replace(build_options(None, doc), progress=progress))
    engines = result.manifest.engines
    files = ", ".join(f"{e.file} ({e.bytes / 1e6:.2f} MB)" for e in engines)
    return (f"export: bundle {result.bundle} with {len(engines)} engines: {files}; report {result.report}",
            {"bundle": str(result.bundle)})


def evaluate_model(model: Path, data: Path, imgsz: int | None = None, progress: bool = False) -> Any:
    """COCO box and mask mAP of a checkpoint (exported to a static ONNX first), ONNX model or bundle."""
    from edgeseg.config import parse_config  # noqa: PLC0415
    from edgeseg.evaluation.coco import EVAL_POSTPROCESS, evaluate  # noqa: PLC0415
    from export.train.dataset import resolve_coco  # noqa: PLC0415

    files = resolve_coco(data)
    with tempfile.TemporaryDirectory(prefix="edgeseg-recipe-eval-") as tmp:
        if model.suffix.lower() in (".pt", ".pth"):
            from export.torch_export import checkpoint_to_onnx  # noqa: PLC0415

            model = checkpoint_to_onnx(model, Path(tmp) / "model.onnx", imgsz, dynamic=False)
        section: dict[str, Any] = {"path": str(model)}
        if imgsz:
            section["imgsz"] = imgsz
        config = parse_config({"model": section, "postprocess": EVAL_POSTPROCESS})
        return evaluate(config, files.images, files.annotations, Path(tmp) / "results.json", progress=progress)


def _run_eval(loaded: LoadedRecipe, b: EvalStage, progress: bool) -> tuple[str, dict[str, Any]]:
    report = evaluate_model(loaded.resolve(b.model), loaded.resolve(b.data), b.imgsz, progress)
    scores = {"images": report.images, "box_map": report.box_map, "box_map50": report.box_map50,
              "mask_map": report.mask_map, "mask_map50": report.mask_map50}
    out = loaded.resolve(b.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(loaded.resolve(b.model)), "imgsz": b.imgsz, **scores}, indent=1),
                   encoding="utf-8")
    return (f"eval: {loaded.resolve(b.model)} at {b.imgsz or 'its size'} on {report.images} images: box mAP50-95 "
            f"{report.box_map:.3f}, mask mAP50-95 {report.mask_map:.3f} (mAP50 {report.mask_map50:.3f}); "
            f"wrote {out}", scores)


def run_stage(loaded: LoadedRecipe, stage: Stage, resume: bool, progress: bool) -> tuple[str, dict[str, Any]]:
    """Run one stage; its summary line and the numbers recorded with it."""
    b = stage.body
    if stage.kind == "synth":
        return _run_synth(loaded, b)
    if stage.kind == "train":
        return _run_train(loaded, b, resume, progress)
    if stage.kind == "distill":
        return _run_distill(loaded, b, resume, progress)
    if stage.kind == "prune":
        return _run_prune(loaded, b)
    if stage.kind == "fold":
        return _run_fold(loaded, b)
    if stage.kind == "export":
        return _run_export(loaded, b, progress)
    return _run_eval(loaded, b, progress)


@dataclass
class StageOutcome:
    name: str
    kind: str
    ran: bool
    summary: str


def run_recipe(
    path: str | Path, stages: Sequence[str] = (), resume: bool = False, progress: bool = True,
    echo: Any = print,
) -> list[StageOutcome]:
    """Validate the recipe, then run its stages in order (or only ``stages``), skipping finished ones."""
    loaded = load_recipe(path)
    known = [s.name for s in loaded.recipe.stages]
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise ExportError(f"recipe {loaded.path}: no stage {unknown[0]!r} (stages: {', '.join(known)})")
    chosen = [s for s in loaded.recipe.stages if not stages or s.name in stages]
    # Refuse stale outputs up front, before any long stage runs.
    statuses = {s.name: stage_status(loaded, s) for s in chosen}
    for s in chosen:
        state, why = statuses[s.name]
        if state == "stale":
            raise ExportError(f"recipe {loaded.path}: stage {s.name!r}: its output was made by another configuration "
                              f"({why}); delete it and {_record_path(loaded, s)} to run it again")
        if state == "partial" and not resume:
            raise ExportError(f"recipe {loaded.path}: stage {s.name!r}: {loaded.resolve(s.body.out)} holds {why}; "
                              "pass --resume to continue it, or delete it")
    _check_checkpoints(loaded, [s for s in chosen if statuses[s.name][0] != "done"])
    if loaded.recipe.threads:
        import torch  # noqa: PLC0415

        torch.set_num_threads(loaded.recipe.threads)
    outcomes = []
    for s in chosen:
        state, summary = stage_status(loaded, s)
        prefix = f"recipe {loaded.recipe.name}: stage {s.name} ({s.kind})"
        if state == "done":
            echo(f"{prefix}: done, skipped: {summary}")
            outcomes.append(StageOutcome(s.name, s.kind, False, summary))
            continue
        log.info("%s: running", prefix)
        t0 = time.perf_counter()
        summary, extra = run_stage(loaded, s, resume and state == "partial", progress)
        _write_record(_record_path(loaded, s), s, summary, time.perf_counter() - t0, extra)
        echo(f"{prefix}: {summary}")
        outcomes.append(StageOutcome(s.name, s.kind, True, summary))
    return outcomes


def _check_checkpoints(loaded: LoadedRecipe, to_run: Sequence[Stage]) -> None:
    """Read every checkpoint the stages to run take as input (and no earlier stage remakes): a
    corrupt or mismatched one is refused now, not after an hour of the stages before it."""
    from export.train.checkpoints import load_checkpoint  # noqa: PLC0415

    remade: list[Path] = []
    for stage in to_run:
        ins, outs = _inputs_outputs(loaded, stage)
        for p in ins:
            if p.suffix.lower() in (".pt", ".pth") and p.is_file() and not any(p == m or m in p.parents
                                                                                 for m in remade):
                try:
                    load_checkpoint(p)
                except ExportError as exc:
                    raise ExportError(f"recipe {loaded.path}: stage {stage.name!r}: {exc}") from None
        remade.extend(outs)


def check_recipe(path: str | Path, echo: Any = print) -> LoadedRecipe:
    """Validate the recipe and print each stage's status."""
    loaded = load_recipe(path)
    for s in loaded.recipe.stages:
        state, why = stage_status(loaded, s)
        echo(f"recipe {loaded.recipe.name}: stage {s.name} ({s.kind}): {state}{': ' + why if why else ''}")
    return loaded

