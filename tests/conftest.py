"""Shared fixtures: the real material of ../shared/realdata, skipped with a reason where absent.

The runtime's tests also run under Python 3.8 and 3.10 (``make test-compat``). Test files that
import the export stage (``export``), whose floor is Python 3.11, are not collected below that
floor; the terminal summary names them, so nothing disappears silently.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(__import__("os").environ.get("EDGESEG_REALDATA", ROOT.parent / "shared" / "realdata"))
MODEL_640 = REALDATA / "models" / "yolov8n-seg-640-fp32-reconstructed.onnx"
MODEL_DYNAMIC = REALDATA / "models" / "yolov8n-seg-dynamic-fp32-reconstructed.onnx"
MODEL_INT8_320 = REALDATA / "models" / "yolov8n-seg_int8.onnx"
VAL_IMAGES = REALDATA / "coco_val2017_subset" / "images"
VAL_ANNOTATIONS = REALDATA / "coco_val2017_subset" / "instances_val2017_subset.json"
TRAIN_IMAGES = REALDATA / "coco_train2017_subset" / "images"


#: The export stage's floor (``export.EXPORT_MIN_PYTHON``, not imported: it refuses older Pythons).
EXPORT_MIN_PYTHON = (3, 11)
_IMPORTS_EXPORT = re.compile(r"^(from export[ .]|import export\b)", re.MULTILINE)
_not_collected: set[str] = set()  # pytest may ask twice for one path


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """Leave out test files of the export stage where this Python is below its floor."""
    if sys.version_info >= EXPORT_MIN_PYTHON or collection_path.suffix != ".py":
        return None
    if collection_path.name.startswith("test_") and _IMPORTS_EXPORT.search(collection_path.read_text("utf-8")):
        _not_collected.add(collection_path.name)
        return True
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _not_collected:
        terminalreporter.write_line(
            f"not collected on Python {sys.version_info[0]}.{sys.version_info[1]} (the export stage needs "
            f"{EXPORT_MIN_PYTHON[0]}.{EXPORT_MIN_PYTHON[1]}+): {', '.join(sorted(_not_collected))}"
        )


@pytest.fixture(autouse=True)
def _no_logging_onto_old_captures() -> Iterator[None]:
    """A CLI call in a test configures logging onto the stderr of that moment (capsys's capture);
    a later test must not log onto that closed stream ("--- Logging error ---" in its stderr).
    Stream handlers a test added to the root logger go, and its level comes back."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.setLevel(level)


def copy_images(source: Path, folder: Path, count: int) -> Path:
    """The first ``count`` images of ``source`` copied into ``folder`` (tests may damage the copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted(source.glob("*.jpg"))[:count]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test material missing: {path} (expected ../shared/realdata)")
    return path


@pytest.fixture(scope="session")
def model_640() -> Path:
    return _need(MODEL_640)


@pytest.fixture(scope="session")
def model_dynamic() -> Path:
    return _need(MODEL_DYNAMIC)


@pytest.fixture(scope="session")
def model_int8_320() -> Path:
    return _need(MODEL_INT8_320)


@pytest.fixture(scope="session")
def val_images() -> Path:
    return _need(VAL_IMAGES)


@pytest.fixture(scope="session")
def val_annotations() -> Path:
    return _need(VAL_ANNOTATIONS)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-model tests, restored afterwards: tiny models gain
    nothing from intra-op threads, and on a busy 2-core machine their spin-waiting barriers slow
    each step by an order of magnitude. Modules opt in with ``pytestmark``."""
    import torch  # noqa: PLC0415 (only the export-stage tests need torch)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
