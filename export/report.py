"""The export report: a markdown table and PNG plots of latency and accuracy per engine.

This is the resolution-performance table the adaptive picker starts from, written for people:
``report.md`` beside ``latency.png`` and (when a validation set was given) ``accuracy.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on build machines or devices
import matplotlib.pyplot as plt  # noqa: E402

from edgeseg.bundle.manifest import EngineRecord, Manifest  # noqa: E402


def _label(e: EngineRecord) -> str:
    q = f" {e.quantization}" if e.quantization else ""
    return f"{e.runtime} {e.precision}{q}"


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _plot(manifest: Manifest, path: Path, value: str, ylabel: str) -> bool:
    series: dict[str, list[tuple[int, float]]] = {}
    for e in manifest.engines:
        v = None
        if value == "latency" and e.latency is not None:
            v = e.latency.median_ms
        elif value == "mask_map" and e.accuracy is not None:
            v = e.accuracy.mask_map
        if v is not None:
            series.setdefault(_label(e), []).append((max(e.resolution), v))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, points in sorted(series.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("input resolution (px)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{manifest.name}: {ylabel}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(manifest: Manifest, out_dir: Path, notes: list[str], parameters: int) -> Path:
    """Write report.md (+ PNG plots) into ``out_dir``; returns the markdown path."""
    lines = [
        f"# Export report: {manifest.name}",
        "",
        f"Source model: `{manifest.model.source}` ({manifest.model.family}, {len(manifest.model.class_names)} classes, "
        f"{parameters:,} parameters). Created {manifest.created}.",
        "",
        "| file | runtime | precision | resolution | size MB | latency median ms | p90 ms | box mAP | mask mAP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in sorted(manifest.engines, key=lambda e: (max(e.resolution), e.runtime, e.precision)):
        lat, acc = e.latency, e.accuracy
        lines.append(
            f"| {e.file} | {e.runtime} | {e.precision}{' ' + e.quantization if e.quantization else ''} | "
            f"{e.resolution[1]}x{e.resolution[0]} | {e.bytes / 1e6:.1f} | "
            f"{_fmt(lat.median_ms if lat else None, 1)} | {_fmt(lat.p90_ms if lat else None, 1)} | "
            f"{_fmt(acc.box_map if acc else None, 3)} | {_fmt(acc.mask_map if acc else None, 3)} |"
        )
    devices = sorted({e.latency.device for e in manifest.engines if e.latency})
    if devices:
        lines += ["", "Latency measured on: " + "; ".join(devices) + " (backend inference only)."]
    datasets = sorted({f"{e.accuracy.dataset} ({e.accuracy.images} images)" for e in manifest.engines if e.accuracy})
    if datasets:
        lines += ["", "Accuracy (COCO mAP50-95) on: " + "; ".join(datasets) + "."]
    if _plot(manifest, out_dir / "latency.png", "latency", "latency, median ms"):
        lines += ["", "![latency](latency.png)"]
    if _plot(manifest, out_dir / "accuracy.png", "mask_map", "mask mAP50-95"):
        lines += ["", "![accuracy](accuracy.png)"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
