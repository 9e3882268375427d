"""Training: COCO data and augmentation, losses that learn, resumable checkpoints, refusals, the command."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the export stage's torch is not installed")

from pycocotools import mask as mask_utils  # noqa: E402

from edgeseg.errors import ExportError  # noqa: E402
from edgeseg.model import Normalization, load_model  # noqa: E402
from edgeseg.preprocess import Preprocessor  # noqa: E402
from export.models.edgeseg import ModelConfig, build_model  # noqa: E402
from export.torch_export import checkpoint_to_onnx  # noqa: E402
from export.train.assign import assign  # noqa: E402
from export.train.checkpoints import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from export.train.cli import add_train_parser  # noqa: E402
from export.train.dataset import (  # noqa: E402
    Augment,
    CocoSegmentation,
    EpochSampler,
    collate,
    decode_mask,
    resolve_coco,
)
from export.train.losses import LossWeights, SegLoss  # noqa: E402
from export.train.trainer import TrainConfig, Trainer  # noqa: E402

SIZE = 64
CLASSES = ("square", "disc")
#: Fixture colours (BGR): a green square and a red disc on a dark grey background.
SQUARE_BGR = (40, 200, 60)
DISC_BGR = (30, 60, 220)
BACKGROUND = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_coco(root: Path, count: int, seed: int, split: str = "train") -> Path:
    """``count`` 96x120 images, each with one square (polygon) and one disc (RLE), as COCO."""
    rng = np.random.default_rng(seed)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(count):
        h, w = 96, 120
        img = np.full((h, w, 3), BACKGROUND, np.uint8)
        x0, y0 = int(rng.integers(2, 40)), int(rng.integers(2, 56))
        x1, y1 = x0 + int(rng.integers(22, 36)), y0 + int(rng.integers(22, 36))
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), SQUARE_BGR, -1)
        square = [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]
        r = int(rng.integers(10, 17))
        cx, cy = int(rng.integers(w // 2 + r, w - r)), int(rng.integers(r, h - r))
        disc = np.zeros((h, w), np.uint8)
        cv2.circle(disc, (cx, cy), r, 1, -1)
        img[disc > 0] = DISC_BGR
        rle = mask_utils.encode(np.asfortranarray(disc))
        rle["counts"] = rle["counts"].decode()
        for cat, seg, bbox in ((1, [square], [x0, y0, x1 - x0, y1 - y0]),
                               (2, rle, [float(v) for v in mask_utils.toBbox(rle)])):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                         "segmentation": seg, "bbox": bbox, "area": float(bbox[2] * bbox[3])})
        name = f"{i + 1:06d}.png"
        cv2.imwrite(str(folder / name), img)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 1, "name": CLASSES[0]}, {"id": 2, "name": CLASSES[1]}]}
    path = root / f"instances_{split}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("coco")
    return make_coco(root, 4, seed=0, split="train"), make_coco(root, 2, seed=1, split="val")


def config(data: tuple[Path, Path], out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(data=str(data[0]), imgsz=SIZE, epochs=2, batch=2, device="cpu", out=str(out),
                                   workers=0, val=None)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


# -- data -------------------------------------------------------------------------------------------


def test_resolve_coco_layouts(data: tuple[Path, Path], tmp_path: Path) -> None:
    train_json = data[0]
    assert resolve_coco(train_json).images == train_json.parent / "train"  # instances_<split>.json
    (tmp_path / "images").mkdir()
    (tmp_path / "ann.json").write_text("{}")
    assert resolve_coco(tmp_path).annotations == tmp_path / "ann.json"
    assert resolve_coco(tmp_path).images == tmp_path / "images"
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ExportError, match="expected one COCO instances .json .* found ann.json, other.json"):
        resolve_coco(tmp_path)
    with pytest.raises(ExportError, match="dataset not found"):
        resolve_coco(tmp_path / "missing")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not readable JSON"),
        ('{"images": []}', "no list annotations, categories"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}', "none of its 0 images"),
    ],
)
def test_bad_annotations_are_refused_in_one_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "a.json").write_text(content)
    with pytest.raises(ExportError, match=message) as err:
        CocoSegmentation(resolve_coco(tmp_path), SIZE)
    assert "\n" not in str(err.value)


def test_polygon_and_rle_masks_decode_alike() -> None:
    m = np.zeros((20, 30), np.uint8)
    m[4:12, 5:20] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    uncompressed = {"size": [20, 30], "counts": [int(c) for c in _runs(m)]}
    for seg in ([[5.0, 4.0, 20.0, 4.0, 20.0, 12.0, 5.0, 12.0]], rle, uncompressed):
        assert (decode_mask(seg, 20, 30) == m).all()


def _runs(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    return [*runs, count]


def test_validation_samples_are_the_runtime_letterbox(data: tuple[Path, Path]) -> None:
    val = CocoSegmentation(resolve_coco(data[1]), SIZE)
    a, b = val[0], val[0]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    image = cv2.imread(str(val.images[0].path))
    tensor, letterbox = Preprocessor(Normalization(), 1)(image, (SIZE, SIZE))  # type: ignore[misc]
    np.testing.assert_allclose(a.image.transpose(2, 0, 1) / 255.0, tensor[0], atol=1e-6)
    assert a.letterbox == letterbox
    assert a.labels.tolist() == [0, 1] and a.masks.shape == (2, SIZE // 4, SIZE // 4)


def _centroid(weights: np.ndarray, scale: float) -> np.ndarray:
    yy, xx = np.indices(weights.shape) + 0.5
    return np.array([(weights * xx).sum(), (weights * yy).sum()]) / weights.sum() * scale


def test_augmentation_only_at_train_time_and_geometry_stays_exact(data: tuple[Path, Path]) -> None:
    files = resolve_coco(data[0])
    train = CocoSegmentation(files, SIZE, augment=Augment(scale=(0.6, 1.6), hsv=(0.0, 0.0, 0.0)), seed=3)
    samples = [train[(0, epoch)] for epoch in range(6)]
    assert np.array_equal(train[(0, 2)].image, samples[2].image), "seeded by (seed, epoch, index)"
    assert len({s.image.tobytes() for s in samples}) == 6, "a new augmentation every epoch"
    for s in samples:
        assert s.letterbox is None and ((s.boxes >= 0) & (s.boxes <= SIZE)).all()
        square = s.labels.tolist().index(0) if 0 in s.labels else None
        if square is None:
            continue
        # The mask moved with the image: its centroid is the square's pixels' (green minus red).
        rgb = s.image.astype(np.float32)
        green = np.clip((rgb[:, :, 1] - rgb[:, :, 0]) / 140.0, 0, 1)
        if green.sum() > 20:
            assert np.abs(_centroid(s.masks[square], 4.0) - _centroid(green, 1.0)).max() < 1.0
    jittered = CocoSegmentation(files, SIZE, augment=Augment(flip=0.0, scale=(1.0, 1.0)), seed=3)
    plain = CocoSegmentation(files, SIZE)
    assert not np.array_equal(jittered[(0, 0)].image, plain[0].image), "colour jitter applied"


def test_sampler_resumes_mid_epoch() -> None:
    sampler = EpochSampler(10, seed=1)
    sampler.set_epoch(3)
    full = [i for i, _ in sampler]
    sampler.set_epoch(3, start=4)
    assert [i for i, _ in sampler] == full[4:] and len(sampler) == 6
    sampler.set_epoch(4)
    assert [i for i, _ in sampler] != full


# -- learning -----------------------------------------------------------------------------------------


def test_assignment_covers_tiny_instances_and_ignores_padding() -> None:
    anchors = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
    pred_boxes = torch.cat([anchors - 4, anchors + 4], 1)[None]  # 8 x 8 boxes around each anchor
    scores = torch.full((1, 4, 2), 0.5)
    gt_boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [9.0, 9.0, 10.0, 10.0], [0.0, 0.0, 16.0, 16.0]]])
    labels = torch.tensor([[0, 1, 0]])
    valid = torch.tensor([[True, True, False]])  # the third is padding
    a = assign(scores, pred_boxes, anchors, labels, gt_boxes, valid)
    assert a.foreground[0].tolist() == [True, False, False, True]
    assert a.gt_index[0, 0] == 0 and a.gt_index[0, 3] == 1, "the tiny box gets its nearest anchor"
    assert a.target_scores[0, 0, 0] > 0 and a.target_scores[0, 3, 1] > 0
    assert float(a.target_scores[0, 0, 0]) == pytest.approx(1.0), "best anchor's target = its IoU (exact box)"
    assert a.target_scores[0, 1:3].sum() == 0
    empty = assign(scores, pred_boxes, anchors, labels[:, :0], gt_boxes[:, :0], valid[:, :0])
    assert not empty.foreground.any() and empty.target_scores.sum() == 0


def test_optional_l1_box_term(data: tuple[Path, Path]) -> None:
    train = CocoSegmentation(resolve_coco(data[0]), SIZE)
    batch = collate([train[0], train[1]]).to("cpu")
    model = build_model(ModelConfig.create("tiny", CLASSES, imgsz=SIZE))
    outputs = model(batch.images)
    plain = SegLoss(2)(batch, outputs)
    with_l1 = SegLoss(2, LossWeights(l1=1.0))(batch, outputs)
    assert "l1" not in plain.parts and float(with_l1.parts["l1"]) > 0
    assert float(with_l1.total) == pytest.approx(float(plain.total) + float(with_l1.parts["l1"]), rel=1e-4)


def test_overfitting_one_batch_drops_every_loss(data: tuple[Path, Path], tmp_path: Path) -> None:
    """The losses work: 20 steps on one fixed batch cut each of them by far more than noise would.

    96 px rather than 64: at 64 the objects are 3-5 prototype pixels wide, and the soft (area-
    averaged) mask targets put a floor under the mask loss that hides how much it has learnt.
    """
    trainer = Trainer(config(data, tmp_path, imgsz=96, batch=4, epochs=200, augment=False, ema=False,
                             warmup_steps=3), progress=False)
    batch = collate([trainer.train_set[i] for i in range(4)])
    torch.manual_seed(0)
    history = [trainer.train_step(batch) for _ in range(20)]
    first, last = history[0], history[-1]
    assert last["mask"] < 0.4 * first["mask"], history  # measured: -78%
    assert last["box"] < 0.5 * first["box"], history  # -81%
    assert last["cls"] < 0.5 * first["cls"], history  # -71%
    assert trainer.step == 20


def test_extra_losses_are_added_and_logged(data: tuple[Path, Path], tmp_path: Path) -> None:
    trainer = Trainer(config(data, tmp_path, ema=False), progress=False)
    batch = collate([trainer.train_set[i] for i in range(2)]).to("cpu")
    base, _, _ = trainer.compute_loss(batch)
    trainer.extra_losses["bn_l1"] = lambda _batch, _outputs: torch.tensor(1.5)
    total, parts, result = trainer.compute_loss(batch)
    assert float(total) == pytest.approx(float(base) + 1.5, rel=1e-5)
    assert float(parts["bn_l1"]) == 1.5 and {"cls", "box", "mask"} <= set(parts)
    assert result.assignment is not None and result.assignment.num_foreground > 0


# -- checkpoints and resuming ---------------------------------------------------------------------------


def _states_equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_states_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_continues_at_the_saved_step_as_if_never_stopped(data: tuple[Path, Path], tmp_path: Path) -> None:
    stopped = Trainer(config(data, tmp_path / "a", max_steps=1), progress=False)
    stopped.fit()  # stops mid-epoch (2 steps per epoch)
    resumed = Trainer(config(data, tmp_path / "a", max_steps=3), resume=True, progress=False)
    assert (resumed.step, resumed.epoch) == (1, 0)
    assert _states_equal(resumed.optimizer.state_dict(), stopped.optimizer.state_dict())
    assert resumed.scheduler.last_epoch == 1 and resumed.ema is not None and resumed.ema.updates == 1
    resumed.fit()
    straight = Trainer(config(data, tmp_path / "b", max_steps=3), progress=False)
    straight.fit()
    assert resumed.step == straight.step == 3
    for (name, p), q in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    saved = load_checkpoint(tmp_path / "a" / "last.pt")
    assert (saved.step, saved.epoch) == (3, 1)


def test_a_finished_run_is_not_overwritten(data: tuple[Path, Path], tmp_path: Path) -> None:
    Trainer(config(data, tmp_path, max_steps=1), progress=False).fit()
    with pytest.raises(ExportError, match="already holds last.pt: pass --resume"):
        Trainer(config(data, tmp_path, max_steps=1), progress=False)


@pytest.fixture(scope="module")
def checkpoint(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    Trainer(config(data, out, max_steps=1), progress=False).fit()
    return out / "last.pt"


def _write_bad(kind: str, good: Path, path: Path) -> Path:
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "state_dict":
        torch.save(build_model(ModelConfig.create("tiny", CLASSES)).state_dict(), path)
    elif kind == "pickled_object":
        torch.save({"format": "edgeseg-checkpoint", "opts": argparse.Namespace(a=1)}, path)
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"a": 1}))
    elif kind == "newer":
        raw = torch.load(good, weights_only=True)
        torch.save({**raw, "version": 99}, path)
    elif kind == "weights_misfit":
        raw = torch.load(good, weights_only=True)
        torch.save({**raw, "model_config": {**raw["model_config"], "width": 0.5}}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "not a readable torch checkpoint"),
        ("text", "not a readable torch checkpoint"),
        ("plain_pickle", "not a readable torch checkpoint"),
        ("pickled_object", "not a readable torch checkpoint"),
        ("state_dict", "not an edgeseg checkpoint"),
        ("newer", "format version 99, this edgeseg reads up to 1"),
        ("weights_misfit", "'model' weights do not fit its model config .*has shape"),
    ],
)
def test_bad_checkpoints_are_refused_in_one_line(checkpoint: Path, tmp_path: Path, kind: str, message: str) -> None:
    path = _write_bad(kind, checkpoint, tmp_path / f"{kind}.pt")
    with pytest.raises(ExportError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    ("size", "classes", "message"),
    [
        ("small", CLASSES, "model size tiny, expected small"),
        ("tiny", (*CLASSES, "ring"), "2 classes, expected 3"),
        ("tiny", ("disc", "square"), "classes square, disc, expected disc, square"),
    ],
)
def test_checkpoint_of_another_model_is_refused(checkpoint: Path, size: str, classes: tuple[str, ...],
                                                message: str) -> None:
    expect = ModelConfig.create(size, classes, imgsz=SIZE)
    with pytest.raises(ExportError, match=message) as err:
        load_checkpoint(checkpoint, expect=expect)
    assert "\n" not in str(err.value)


def test_resume_with_another_model_size_is_refused_before_training(checkpoint: Path, data: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="model size tiny, requested small"):
        Trainer(config(data, tmp_path, model_size="small"), resume=checkpoint, progress=False)
    with pytest.raises(ExportError, match="trained with batch 2, resumed with batch 4"):
        Trainer(config(data, tmp_path, batch=4), resume=checkpoint, progress=False)
    with pytest.raises(ExportError, match="trained with optimizer adamw, resumed with optimizer sgd"):
        Trainer(config(data, tmp_path, optimizer="sgd"), resume=checkpoint, progress=False)


def test_weights_only_checkpoint_cannot_be_resumed_but_fine_tuned(checkpoint: Path, data: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    ckpt = load_checkpoint(checkpoint)
    bare = save_checkpoint(Checkpoint(tmp_path / "w.pt", ckpt.model_config, ckpt.model), tmp_path / "w.pt")
    with pytest.raises(ExportError, match="holds weights only"):
        Trainer(config(data, tmp_path / "r"), resume=bare, progress=False)
    tuned = Trainer(config(data, tmp_path / "f", weights=str(bare)), progress=False)
    torch.testing.assert_close(tuned.model.state_dict(), ckpt.model)
    assert tuned.step == 0


# -- the command and the export ---------------------------------------------------------------------------


def test_train_command_summary_and_onnx(data: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--data", str(data[0]), "--val", str(data[1]), "--imgsz", str(SIZE),
                              "--epochs", "1", "--batch", "2", "--workers", "0", "--device", "cpu",
                              "--out", str(out), "--max-steps", "1"])
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"train: {out / 'best.pt'} (edgeseg-tiny, 2 classes, k=32, ")
    assert "M params" in line and "GFLOPs at 64" in line and "mask mAP50-95" in line and "on 2 images" in line
    ckpt = load_checkpoint(out / "best.pt")
    assert set(ckpt.metrics) >= {"box_map", "mask_map"} and ckpt.ema is not None
    onnx_path = checkpoint_to_onnx(out / "best.pt", tmp_path / "model.onnx")
    model = load_model(onnx_path, imgsz=320)
    try:
        assert model.spec.family == "edgeseg" and model.spec.class_names == CLASSES
    finally:
        model.close()


def test_cuda_request_without_cuda_is_refused(data: tuple[Path, Path], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(ExportError, match="device cuda: torch sees no CUDA device"):
        Trainer(config(data, tmp_path, device="cuda"), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_step_with_amp(data: tuple[Path, Path], tmp_path: Path) -> None:
    trainer = Trainer(config(data, tmp_path, device="cuda", max_steps=2), progress=False)
    assert trainer.amp and trainer.device.type == "cuda"
    result = trainer.fit()
    assert result.steps == 2 and load_checkpoint(result.last).scaler is not None
