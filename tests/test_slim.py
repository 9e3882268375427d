"""Network slimming and BN folding: sparsity term, dependency-aware pruning, folding, refusals, recipes."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the export stage's torch is not installed")
pytest.importorskip("torch_pruning", reason="torch-pruning is not installed")

from edgeseg.errors import ExportError  # noqa: E402
from export.models.edgeseg import MODEL_SIZES, EdgeSeg, ModelConfig, build_model, count_parameters  # noqa: E402
from export.recipes.cli import add_recipe_parser  # noqa: E402
from export.recipes.runner import check_recipe, load_recipe, run_recipe  # noqa: E402
from export.slim.cli import add_fold_parser, add_prune_parser  # noqa: E402
from export.slim.fold import FOLD_RTOL, fold_and_verify, fold_checkpoint  # noqa: E402
from export.slim.prune import check_ratio, layout, protected_layers, prune_checkpoint, prune_model  # noqa: E402
from export.slim.recalibrate import image_batches, recalibrate_bn, recalibration_images  # noqa: E402
from export.slim.sparsity import SCHEDULES, BNSparsity, batchnorms, check_sparsity, gamma_summary  # noqa: E402
from export.train.checkpoints import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402

NAMES = ("circle", "square", "triangle")
SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomise_bn(model: EdgeSeg, seed: int = 0) -> EdgeSeg:
    """BN statistics and scales away from identity (some scales near zero, as after a sparsity phase)."""
    g = torch.Generator().manual_seed(seed)
    for m in batchnorms(model):
        n = m.num_features
        m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
        m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        m.weight.data.copy_(torch.rand(n, generator=g) * (torch.rand(n, generator=g) > 0.3))
        m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


def _model(size: str = "tiny", seed: int = 0) -> EdgeSeg:
    torch.manual_seed(seed)
    return _randomise_bn(build_model(ModelConfig.create(size, NAMES, num_masks=8, imgsz=SIZE)), seed)


def _checkpoint(tmp_path: Path, model: EdgeSeg, name: str = "model.pt") -> Path:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return save_checkpoint(Checkpoint(path=tmp_path / name, model_config=model.config, model=state), tmp_path / name)


# -- folding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_fold_matches_unfolded_for_every_size(size: str) -> None:
    model = _model(size)
    folded, report = fold_and_verify(model, sizes=(SIZE, SIZE + 32))
    assert report.max_relative_difference <= FOLD_RTOL
    assert report.folded == len(batchnorms(model)) > 0
    assert not batchnorms(folded)
    assert report.parameters[1] < report.parameters[0]  # BN scale/shift gone, one bias per conv added
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = model.predict(x), folded.predict(x)
    assert [t.shape for t in a] == [t.shape for t in b]


def test_fold_refuses_a_mismatch_beyond_tolerance() -> None:
    with pytest.raises(ExportError, match="exceeds the limit"):
        fold_and_verify(_model(), tolerance=0.0 - 1.0)


def test_fold_checkpoint_writes_a_runtime_onnx(tmp_path: Path) -> None:
    from edgeseg.model import load_model

    ckpt = _checkpoint(tmp_path, _model())
    result = fold_checkpoint(ckpt, tmp_path / "folded.onnx", imgsz=SIZE, dynamic=False)
    assert result.report.max_relative_difference <= FOLD_RTOL
    assert "max relative output difference" in result.summary_line()
    import onnx

    proto = onnx.load(str(result.onnx))
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    model = load_model(result.onnx)
    assert model.spec.class_names == NAMES and model.spec.num_masks == 8
    model.close()


# -- pruning ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_prune_keeps_the_layout_and_reduces_parameters(ratio: float) -> None:
    model = _model()
    before = layout(model, SIZE)
    params = count_parameters(model)
    protected = [m.weight.shape[0] for m in protected_layers(model)]  # type: ignore[union-attr]
    report = prune_model(model, ratio, SIZE)
    assert layout(model, SIZE) == before == ((1, 4 + len(NAMES) + 8, 84), (1, 8, 16, 16))
    assert [m.weight.shape[0] for m in protected_layers(model)] == protected  # type: ignore[union-attr]
    assert count_parameters(model) < params and report.parameters == (params, count_parameters(model))
    assert report.flops[1] < report.flops[0] and report.channels[1] < report.channels[0]
    assert model.config.pruned


def test_prune_at_zero_changes_nothing() -> None:
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_model(model, 0.0, SIZE)
    assert report.groups == 0 and not model.config.pruned
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_prune_removes_the_smallest_bn_scales_first() -> None:
    model = _model()
    with torch.no_grad():
        for bn in batchnorms(model):
            bn.weight.uniform_(1.0, 2.0)
        stem = model.backbone.stem.bn
        stem.weight.fill_(10.0)
        stem.weight[:8] = 1e-4  # eight dead channels: the first to go, network-wide
    prune_model(model, 0.05, SIZE)
    assert model.backbone.stem.bn.num_features == 8
    assert float(model.backbone.stem.bn.weight.detach().min()) == 10.0


def test_pruned_checkpoint_rebuilds_and_folds(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path, _model())
    result = prune_checkpoint(source, tmp_path / "pruned.pt", 0.5, imgsz=SIZE)
    assert "prune:" in result.summary_line() and "params" in result.summary_line()
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.model_config.pruned and ckpt.optimizer is None
    model = build_model(ckpt.model_config, ckpt.model)
    assert count_parameters(model) == result.report.parameters[1]
    assert layout(model, SIZE) == ((1, 4 + len(NAMES) + 8, 84), (1, 8, 16, 16))
    folded, report = fold_and_verify(model)  # a pruned network folds as well
    assert report.max_relative_difference <= FOLD_RTOL and not batchnorms(folded)


@pytest.mark.parametrize("ratio", [-0.1, 0.95, 1.0, 2.0, float("nan")])
def test_ratio_out_of_range_is_one_line(ratio: float) -> None:
    with pytest.raises(ExportError, match="prune ratio") as info:
        check_ratio(ratio)
    assert "\n" not in str(info.value)


def test_prune_ratio_is_checked_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="prune ratio 0.95"):
        prune_checkpoint(tmp_path / "missing.pt", tmp_path / "out.pt", 0.95)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a checkpoint at all", "not a readable torch checkpoint"),
        (None, "not an edgeseg checkpoint"),
        (b"", "not a readable torch checkpoint"),
    ],
)
def test_corrupt_checkpoint_is_one_line(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"weight": torch.zeros(3)}, path)  # a bare state dict
    else:
        path.write_bytes(content)
    for call in (lambda: prune_checkpoint(path, tmp_path / "p.pt", 0.5),
                 lambda: fold_checkpoint(path, tmp_path / "f.onnx")):
        with pytest.raises(ExportError, match=match) as info:
            call()
        assert "\n" not in str(info.value)


def test_mismatched_checkpoint_is_one_line(tmp_path: Path) -> None:
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["backbone.stem.conv.weight"] = torch.zeros(5, 3, 3, 3)
    path = save_checkpoint(Checkpoint(path=tmp_path / "m.pt", model_config=model.config, model=state),
                           tmp_path / "m.pt")
    with pytest.raises(ExportError, match="do not fit its model config") as info:
        prune_checkpoint(path, tmp_path / "p.pt", 0.5)
    assert "\n" not in str(info.value)



# -- BN recalibration after pruning ----------------------------------------------------------------


def _images(folder: Path, count: int = 5, size: int = 48) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (size, size + 16, 3), dtype=np.uint8))
    return folder


def test_recalibration_gives_each_bn_the_statistics_of_its_input() -> None:
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
    bn.running_mean.fill_(5.0)
    batches = [torch.rand(2, 3, 8, 8) for _ in range(3)]
    assert recalibrate_bn(torch.nn.Sequential(conv, bn), batches) == 6
    with torch.no_grad():
        y = torch.cat([conv(x) for x in batches])
    assert torch.allclose(bn.running_mean, y.mean((0, 2, 3)), atol=1e-5)
    # the average of the per-batch (unbiased) variances
    per_batch = torch.stack([conv(x).detach().var((0, 2, 3), unbiased=True) for x in batches]).mean(0)
    assert torch.allclose(bn.running_var, per_batch, atol=1e-5)
    assert not bn.training and bn.momentum == 0.1  # left in eval mode, momentum restored


def test_recalibration_batches_are_the_runtimes_letterboxed_inputs(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs", count=5)
    (folder / "notes.txt").write_text("not an image")
    paths = recalibration_images(folder, limit=5)
    assert len(paths) == 5  # the text file is not an image
    batches = list(image_batches(paths, 64, batch=2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    assert batches[0].shape[1:] == (3, 64, 64) and batches[0].dtype == torch.float32
    assert float(batches[0].max()) <= 1.0 and abs(float(batches[0][0, 0, 0, 0]) - 114 / 255) < 1e-6  # border


def test_prune_with_data_re_estimates_bn_statistics(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path, _model())
    folder = _images(tmp_path / "imgs")
    plain = prune_checkpoint(source, tmp_path / "plain.pt", 0.4, SIZE)
    recal = prune_checkpoint(source, tmp_path / "recal.pt", 0.4, SIZE, data=folder, bn_images=4)
    assert plain.bn_images == 0 and "not re-estimated" in plain.summary_line()
    assert recal.bn_images == 4 and "re-estimated on 4 images" in recal.summary_line()
    a, b = load_checkpoint(plain.checkpoint).model, load_checkpoint(recal.checkpoint).model
    means = [k for k in a if k.endswith("running_mean")]
    assert means and all(a[k].shape == b[k].shape for k in means)  # the same channels were pruned
    assert all(torch.equal(a[k], b[k]) for k in a if not k.endswith(("running_mean", "running_var", "_tracked")))
    assert sum(not torch.allclose(a[k], b[k]) for k in means) == len(means)
    kept = prune_checkpoint(source, tmp_path / "kept.pt", 0.0, SIZE, data=folder)
    assert kept.bn_images == 0 and "kept (nothing pruned)" in kept.summary_line()


@pytest.mark.parametrize("make", ["missing", "no-images"])
def test_bad_recalibration_data_is_one_line_before_pruning(tmp_path: Path, make: str) -> None:
    source = _checkpoint(tmp_path, _model())
    data = tmp_path / "data"
    if make == "no-images":
        data.mkdir()
        (data / "readme.md").write_text("no pictures here")
    with pytest.raises(ExportError, match=f"{data}") as info:
        prune_checkpoint(source, tmp_path / "p.pt", 0.4, SIZE, data=data)
    assert "\n" not in str(info.value) and not (tmp_path / "p.pt").exists()


# -- sparsity --------------------------------------------------------------------------------------


def test_sparsity_term_is_l1_of_bn_scales_times_schedule() -> None:
    model = _model()
    step = [0]
    term = BNSparsity(model, 1e-3, SCHEDULES["linear"], lambda: (step[0], 10))
    l1 = sum(float(bn.weight.abs().sum()) for bn in batchnorms(model))
    assert float(term(None, None)) == pytest.approx(1e-3 * l1, rel=1e-5)  # type: ignore[arg-type]
    step[0] = 5
    assert float(term(None, None)) == pytest.approx(0.5e-3 * l1, rel=1e-5)  # type: ignore[arg-type]
    step[0] = 10
    assert float(term(None, None)) == 0.0  # type: ignore[arg-type]


def test_sparsity_drives_bn_scales_down() -> None:
    model = _model().train()
    start = gamma_summary(model)
    term = BNSparsity(model, 1e-2, SCHEDULES["constant"], lambda: (0, 1))
    opt = torch.optim.SGD([bn.weight for bn in batchnorms(model)], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        term(None, None).backward()  # type: ignore[arg-type]
        opt.step()
    end = gamma_summary(model)
    assert end.mean < start.mean and end.near_zero > start.near_zero


@pytest.mark.parametrize(("strength", "schedule", "match"), [
    (-1e-4, "constant", "sparsity -0.0001"), (2.0, "constant", "sparsity 2.0"), (1e-4, "exp", "schedule 'exp'"),
])
def test_sparsity_values_are_checked(strength: float, schedule: str, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        check_sparsity(strength, schedule)


# -- commands and recipes --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeseg")
    sub = p.add_subparsers(dest="command", required=True)
    add_prune_parser(sub)
    add_fold_parser(sub)
    add_recipe_parser(sub)
    return p


def test_prune_and_fold_commands_print_one_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _checkpoint(tmp_path, _model())
    p = _parser()
    args = p.parse_args(["prune", "--model", str(source), "--ratio", "0.4", "--out", str(tmp_path / "p.pt")])
    assert args.func(args) == 0
    args = p.parse_args(["fold", "--model", str(tmp_path / "p.pt"), "--out", str(tmp_path / "p.onnx"), "--static"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("prune: ") and lines[1].startswith("fold: ")
    args = p.parse_args(["prune", "--model", str(source), "--ratio", "1.5", "--out", str(tmp_path / "q.pt")])
    with pytest.raises(ExportError, match="prune ratio 1.5"):
        args.func(args)


RECIPE = """\
version: 1
name: t
root: .
stages:
  - name: data
    synth: {{out: data, train: 4, val: 2, size: 64, seed: 0}}
  - name: prune
    prune: {{model: {model}, out: pruned.pt, ratio: {ratio}, imgsz: 64, data: data/instances_train.json}}
  - name: fold
    fold: {{model: pruned.pt, out: folded.onnx, imgsz: 64, dynamic: false}}
"""


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("seed: 0}", "seed: 0, colour: red}"), r"stages\[0\] \(data\)\.synth\.colour: unknown key"),
        (lambda t: t.replace("root: .", "root: .\nflavour: x"), "flavour: unknown key"),
        (lambda t: t.replace("ratio: 0.5", "ratio: 0.95"), "prune ratio 0.95"),
        (lambda t: t.replace("model: pruned.pt", "model: nowhere.pt"), "input .*nowhere.pt does not exist"),
        (lambda t: t.replace("name: fold", "name: prune"), "stage name 'prune' used twice"),
        (lambda t: t.replace("    fold: {", "    train: {data: d, out: o}\n    fold: {"), "exactly one of"),
        (lambda t: t.replace("version: 1", "version: 7"), "version"),
    ],
)
def test_recipe_errors_are_one_line_before_any_work(tmp_path: Path, edit: object, match: str) -> None:
    model = _checkpoint(tmp_path, _model())
    path = tmp_path / "r.yaml"
    path.write_text(edit(RECIPE.format(model=model, ratio=0.5)))  # type: ignore[operator]
    with pytest.raises(ExportError, match=match) as info:
        run_recipe(path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data").exists()  # nothing ran


def test_recipe_refuses_a_corrupt_input_checkpoint_before_the_first_stage(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"\x80\x02garbage")
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(model=model, ratio=0.5))
    with pytest.raises(ExportError, match="stage 'prune': checkpoint .*model.pt: not a readable") as info:
        run_recipe(path)
    assert "\n" not in str(info.value) and not (tmp_path / "data").exists()


def test_recipe_runs_then_skips_finished_stages(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path, _model())
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(model=model, ratio=0.5))
    lines: list[str] = []
    outcomes = run_recipe(path, echo=lines.append, progress=False)
    assert [o.ran for o in outcomes] == [True, True, True]
    assert (tmp_path / "folded.onnx").is_file() and (tmp_path / "runs/t/.stages/fold.json").is_file()
    assert len(lines) == 3 and "fold:" in lines[2] and "max relative output difference" in lines[2]
    lines.clear()
    outcomes = run_recipe(path, echo=lines.append, progress=False)
    assert [o.ran for o in outcomes] == [False, False, False]
    assert all("done, skipped" in line for line in lines)
    # A changed stage is refused, not silently redone.
    path.write_text(RECIPE.format(model=model, ratio=0.3))
    with pytest.raises(ExportError, match="another configuration.*ratio 0.5 -> 0.3"):
        run_recipe(path, echo=lines.append)
    status: list[str] = []
    check_recipe(path, echo=status.append)
    assert "stage prune (prune): stale" in status[1]
    # One stage on its own, after its output is removed.
    (tmp_path / "folded.onnx").unlink()
    assert [o.name for o in run_recipe(path, ["fold"], echo=lines.append) if o.ran] == ["fold"]
    with pytest.raises(ExportError, match="no stage 'nope'"):
        run_recipe(path, ["nope"])


def test_demo_recipe_is_valid() -> None:
    loaded = load_recipe(Path(__file__).resolve().parents[1] / "export" / "recipes" / "demo.yaml")
    kinds = [s.kind for s in loaded.recipe.stages]
    for kind in ("synth", "train", "distill", "prune", "fold", "export"):
        assert kind in kinds
