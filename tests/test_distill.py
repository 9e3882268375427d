"""Knowledge distillation: teachers (checkpoint, ONNX), the terms, the distiller in the trainer, label-free mode."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the export stage's torch is not installed")

from edgeseg.errors import ExportError  # noqa: E402
from export.data.synthetic import write_dataset  # noqa: E402
from export.distill.cli import add_distill_parser  # noqa: E402
from export.distill.distiller import DistillConfig, Distiller, distill  # noqa: E402
from export.distill.losses import (  # noqa: E402
    DistillWeights,
    bernoulli_kl,
    class_distillation,
    confidence,
    nms,
    pseudo_labels,
)
from export.distill.teachers import ClassMap, EdgeSegTeacher, OnnxTeacher, load_teacher  # noqa: E402
from export.models.edgeseg import EdgeSeg, ModelConfig, build_model  # noqa: E402
from export.torch_export import export_model  # noqa: E402
from export.train.checkpoints import Checkpoint, save_checkpoint  # noqa: E402
from export.train.dataset import Batch  # noqa: E402
from export.train.losses import SegLoss  # noqa: E402
from export.train.trainer import TrainConfig  # noqa: E402

SHAPES = ("circle", "square", "triangle", "star", "ring")
SIZE = 64
K = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0, size: str = "tiny", names: tuple[str, ...] = SHAPES, confident: bool = True) -> EdgeSeg:
    """A tiny EdgeSeg; ``confident``: biases set so that it "detects" instances with solid masks (a teacher)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig.create(size, names, num_masks=K, imgsz=SIZE))
    if confident:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for seq in model.head.cls:
                list(seq.children())[-1].bias.normal_(1.0, 1.0, generator=g)  # type: ignore[union-attr]
            for seq in model.head.coef:
                list(seq.children())[-1].bias.uniform_(0.2, 1.0, generator=g)  # type: ignore[union-attr]
            model.protonet.out.bias.uniform_(0.2, 1.0, generator=g)  # type: ignore[union-attr]
    return model.eval()


def _checkpoint(path: Path, model: EdgeSeg) -> Path:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return save_checkpoint(Checkpoint(path=path, model_config=model.config, model=state), path)


def _batch(n: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, 3, SIZE, SIZE, generator=g), torch.zeros(n, 0, 4), torch.zeros(n, 0, dtype=torch.long),
                 torch.zeros(n, 0, dtype=torch.bool), [torch.zeros(0, SIZE // 4, SIZE // 4) for _ in range(n)])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, train=8, val=2, size=SIZE, seed=0)
    return root


# -- class maps and elementary terms -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("teacher", "student", "index"),
    [
        (("a", "b", "c"), ("c", "a"), (2, 0)),
        (("Traffic light", "person"), ("traffic_light", "dog"), (0, -1)),
        (("x",), ("y",), (-1,)),
    ],
)
def test_class_map_matches_names(teacher: tuple[str, ...], student: tuple[str, ...], index: tuple[int, ...]) -> None:
    assert ClassMap.build(teacher, student).index == index


def test_bernoulli_kl_is_zero_only_at_the_target() -> None:
    p = torch.tensor([0.01, 0.3, 0.5, 0.99])
    logits = torch.logit(p)
    assert torch.allclose(bernoulli_kl(logits, p), torch.zeros(4), atol=1e-5)
    assert bool((bernoulli_kl(logits + 0.5, p) > 0).all())


def test_nms_keeps_one_box_per_object_and_class() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    assert nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]


# -- teachers ------------------------------------------------------------------------------------------


def test_a_student_identical_to_its_teacher_costs_nothing() -> None:
    model = _model()
    teacher = EdgeSegTeacher(model)
    batch = _batch()
    t = teacher.predict(batch.images)
    weights = DistillWeights(labels=0.0)
    distiller = Distiller(teacher, SHAPES, weights, SegLoss(len(SHAPES)))
    with torch.no_grad():
        result = distiller(batch, model(batch.images))
    assert float(confidence(*t.student_scores(distiller.classes)).max()) > weights.conf  # box/mask terms active
    for name in ("kd_cls", "kd_box", "kd_mask"):
        assert float(result.parts[name]) == pytest.approx(0.0, abs=1e-4), name


def test_distillation_loss_decreases_when_the_student_mimics_the_teacher() -> None:
    teacher = EdgeSegTeacher(_model(seed=1, size="small"))
    student = _model(seed=2, confident=False).train()
    distiller = Distiller(teacher, SHAPES, DistillWeights(labels=0.0), SegLoss(len(SHAPES)))
    batch = _batch()
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        result = distiller(batch, student(batch.images))
        opt.zero_grad()
        result.total.backward()
        opt.step()
        losses.append(float(result.total.detach()))
    assert losses[-1] < 0.8 * losses[0] and min(losses[-3:]) < min(losses[:3])


def test_onnx_teacher_matches_the_checkpoint_it_was_exported_from(tmp_path: Path) -> None:
    model = _model()
    onnx_path = export_model(model, tmp_path / "teacher.onnx", SIZE, dynamic=True)
    onnx_teacher = load_teacher(onnx_path)
    assert isinstance(onnx_teacher, OnnxTeacher) and onnx_teacher.class_names == SHAPES
    images = _batch(3).images
    a, b = EdgeSegTeacher(model).predict(images), onnx_teacher.predict(images)
    for name in ("scores", "boxes", "coefficients", "protos"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        assert float((x - y).abs().max()) <= 1e-3 * max(float(x.abs().max()), 1.0), name
    assert b.features is None


def test_static_onnx_teacher_of_another_size_is_decoded_at_the_students_anchors(tmp_path: Path) -> None:
    onnx_path = export_model(_model(), tmp_path / "static96.onnx", 96, dynamic=False)
    t = OnnxTeacher(onnx_path).predict(_batch(2).images)  # the student trains at 64
    n = sum((SIZE // s) ** 2 for s in (8, 16, 32))
    assert t.scores.shape == (2, n, len(SHAPES)) and t.boxes.shape == (2, n, 4)
    assert t.coefficients.shape == (2, n, K) and t.protos.shape == (2, K, SIZE // 4, SIZE // 4)
    assert float(t.boxes.abs().max()) < 4 * SIZE  # boxes scaled to the student's pixels


def test_onnx_teacher_with_other_classes_distils_the_shared_ones(tmp_path: Path) -> None:
    other = _model(names=("ring", "person", "circle"))
    onnx_path = export_model(other, tmp_path / "other.onnx", SIZE, dynamic=True)
    distiller = Distiller(load_teacher(onnx_path), SHAPES, DistillWeights(), SegLoss(len(SHAPES)))
    assert distiller.classes.index == (2, -1, -1, -1, 0)
    batch = _batch()
    scores, known = distiller.teacher_outputs(batch).student_scores(distiller.classes)
    assert known.tolist() == [True, False, False, False, True] and float(scores[..., 1:4].abs().max()) == 0.0
    student = _model(seed=3, confident=False).train()
    assert torch.isfinite(class_distillation(student(batch.images).cls_logits, scores, known))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d / "missing.pt", "teacher not found"),
        (lambda d: (d / "bad.pt").write_bytes(b"garbage") and d / "bad.pt", "not a readable torch checkpoint"),
        (lambda d: (d / "bad.onnx").write_bytes(b"garbage") and d / "bad.onnx", "cannot load model"),
        (lambda d: (d / "t.txt").write_text("x") and d / "t.txt", "expected an EdgeSeg checkpoint"),
    ],
)
def test_bad_teachers_are_one_line(tmp_path: Path, make: object, match: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ExportError, match=match) as info:
        load_teacher(path)
    assert "\n" not in str(info.value)


def test_teacher_without_a_shared_class_or_features_is_refused(tmp_path: Path) -> None:
    stranger = EdgeSegTeacher(_model(names=("dog", "cat")))
    with pytest.raises(ExportError, match="none of its 2 classes"):
        Distiller(stranger, SHAPES, DistillWeights(), SegLoss(len(SHAPES)))
    onnx_teacher = OnnxTeacher(export_model(_model(), tmp_path / "t.onnx", SIZE))
    with pytest.raises(ExportError, match="feature distillation needs an EdgeSeg checkpoint teacher"):
        Distiller(onnx_teacher, SHAPES, DistillWeights(feature=1.0), SegLoss(len(SHAPES)), student_features=(8, 8, 8))


@pytest.mark.parametrize(("weights", "match"), [
    (DistillWeights(cls=-1.0), "weight cls -1.0"),
    (DistillWeights(conf=1.5), "conf 1.5"),
    (DistillWeights(max_instances=0), "max-instances 0"),
])
def test_distillation_values_are_checked(weights: DistillWeights, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        weights.check()


# -- label-free pseudo-labels ----------------------------------------------------------------------------


def test_pseudo_labels_are_the_teachers_confident_detections() -> None:
    teacher = EdgeSegTeacher(_model())
    batch = _batch()
    t = teacher.predict(batch.images)
    scores, _ = t.student_scores(ClassMap.build(SHAPES, SHAPES))
    labelled = pseudo_labels(batch, t, scores, DistillWeights(pseudo_conf=0.5, max_instances=5))
    assert labelled.boxes.shape[0] == 2 and labelled.boxes.shape[1] <= 5
    assert int(labelled.valid.sum()) == sum(len(m) for m in labelled.masks) > 0
    for i, masks in enumerate(labelled.masks):
        assert masks.shape[1:] == (SIZE // 4, SIZE // 4) and set(masks.unique().tolist()) <= {0.0, 1.0}
        boxes = labelled.boxes[i][labelled.valid[i]]
        assert bool((boxes[:, 2:] > boxes[:, :2]).all()) and float(boxes.max()) <= SIZE
    nothing = pseudo_labels(batch, t, scores * 0, DistillWeights())
    assert nothing.boxes.shape == (2, 0, 4) and not nothing.valid.any()


# -- through the trainer ---------------------------------------------------------------------------------


def _train(data: str, out: Path, val: str | None = None, **kw: object) -> TrainConfig:
    return TrainConfig(data=data, val=val, model_size="tiny", imgsz=SIZE, epochs=1, batch=2, device="cpu",
                       out=str(out), workers=0, num_masks=K, max_steps=2, augment=False, **kw)  # type: ignore[arg-type]


def test_distill_with_labels_and_features_through_the_trainer(shapes: Path, tmp_path: Path) -> None:
    teacher = _checkpoint(tmp_path / "teacher.pt", _model(size="small"))
    config = DistillConfig(teacher=str(teacher), train=_train(str(shapes / "instances_train.json"), tmp_path / "run"),
                           weights=DistillWeights(feature=1.0), sparsity=1e-4)
    result = distill(config, progress=False)
    assert result.train.checkpoint.is_file() and result.train.steps == 2
    for part in ("cls", "mask", "kd_cls", "kd_box", "kd_mask", "kd_feat", "sparsity"):
        assert part in result.train.losses, part
    assert result.teacher_flops and result.teacher_flops > 3 * result.train.flops
    line = result.summary_line()
    assert line.startswith("distill: ") and "x the student's" in line and "\n" not in line


def test_pruned_student_fine_tunes_with_its_unpruned_self_as_teacher(shapes: Path, tmp_path: Path) -> None:
    from export.slim.prune import prune_checkpoint

    model = _model(confident=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.0, 1.0)  # as after a sparsity phase: scales that differ
    unpruned = _checkpoint(tmp_path / "unpruned.pt", model)
    pruned = prune_checkpoint(unpruned, tmp_path / "pruned.pt", 0.5, imgsz=SIZE)
    train = _train(str(shapes / "instances_train.json"), tmp_path / "run", weights=str(pruned.checkpoint))
    result = distill(DistillConfig(teacher=str(unpruned), train=train), progress=False)
    assert result.train.model_config.pruned and result.train.parameters == pruned.report.parameters[1]
    assert result.teacher_flops and result.teacher_flops > result.train.flops


def test_label_free_distillation_trains_on_images_without_annotations(shapes: Path, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    shutil.copytree(shapes / "train", frames)  # plain images: no json anywhere
    teacher = export_model(_model(), tmp_path / "teacher.onnx", SIZE, dynamic=True)
    config = DistillConfig(teacher=str(teacher), train=_train(str(frames), tmp_path / "run"), label_free=True,
                           classes=("circle", "star"))
    result = distill(config, progress=False)
    assert result.train.steps == 2 and "pseudo" in result.train.losses
    assert result.train.model_config.class_names == ("circle", "star")
    doc = json.loads((tmp_path / "run" / "unlabelled" / "instances_unlabelled.json").read_text())
    assert len(doc["images"]) == 8 and doc["annotations"] == []
    assert "label-free" in result.summary_line()


def test_label_free_classes_must_be_the_teachers(shapes: Path, tmp_path: Path) -> None:
    teacher = _checkpoint(tmp_path / "t.pt", _model())
    config = DistillConfig(teacher=str(teacher), train=_train(str(shapes / "train"), tmp_path / "run"),
                           label_free=True, classes=("circle", "hexagon"))
    with pytest.raises(ExportError, match="classes hexagon: not classes of the teacher"):
        distill(config, progress=False)


def test_distill_command_refuses_bad_input_in_one_line(shapes: Path, tmp_path: Path) -> None:
    p = argparse.ArgumentParser(prog="edgeseg")
    add_distill_parser(p.add_subparsers(dest="command", required=True))
    data = str(shapes / "instances_train.json")
    for argv, match in (
        (["--teacher", str(tmp_path / "none.pt")], "teacher not found"),
        (["--teacher", str(tmp_path / "none.pt"), "--classes", "a"], "--classes applies to --label-free only"),
        (["--teacher", str(tmp_path / "none.pt"), "--kd-mask", "-2"], "weight mask -2.0"),
        (["--teacher", str(tmp_path / "none.pt"), "--sparsity", "5"], "sparsity 5.0"),
    ):
        args = p.parse_args(["distill", "--data", data, "--out", str(tmp_path / "r"), *argv])
        with pytest.raises(ExportError, match=match) as info:
            args.func(args)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "r").exists()


def test_distill_command_prints_one_summary_line(shapes: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="edgeseg")
    add_distill_parser(p.add_subparsers(dest="command", required=True))
    teacher = export_model(_model(), tmp_path / "teacher.onnx", SIZE, dynamic=True)
    args = p.parse_args(["distill", "--teacher", str(teacher), "--data", str(shapes / "train"), "--label-free",
                         "--classes", "ring,star", "--imgsz", str(SIZE), "--batch", "2", "--max-steps", "1",
                         "--workers", "0", "--num-masks", str(K), "--device", "cpu", "--threads", "1",
                         "--out", str(tmp_path / "run")])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill: ") and "label-free" in lines[0]


# -- a real prototype-mask ONNX teacher (../shared/realdata) ------------------------------------------


@pytest.mark.realdata
def test_real_yolov8_seg_teacher_gives_pseudo_labels_on_real_images(
    model_dynamic: Path, train_images: Path, tmp_path: Path
) -> None:
    """The COCO yolov8n-seg as a label-free teacher: real persons on real frames become pseudo-labels."""
    from conftest import copy_images

    from export.distill.distiller import write_unlabelled
    from export.train.dataset import CocoSegmentation, collate, resolve_coco

    teacher = load_teacher(model_dynamic)
    assert isinstance(teacher, OnnxTeacher) and len(teacher.class_names) == 80
    frames = copy_images(train_images, tmp_path / "frames", 4)
    data = CocoSegmentation(resolve_coco(write_unlabelled(frames, ("person", "car", "dog"), tmp_path)), 320)
    batch = collate([data[i] for i in range(len(data))]).to("cpu")
    t = teacher.predict(batch.images)
    classes = ClassMap.build(teacher.class_names, ("person", "car", "dog"))
    assert classes.known == 3
    scores, _ = t.student_scores(classes)
    labelled = pseudo_labels(batch, t, scores, DistillWeights())
    assert int(labelled.valid.sum()) > 0  # people, cars or dogs on four COCO images
    assert all(m.shape[1:] == (80, 80) for m in labelled.masks)
