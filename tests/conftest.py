"""Shared fixtures: the real material of ../shared/realdata, skipped with a reason where absent.

Every test that needs that material carries the ``realdata`` marker, so that ``-m "not realdata"``
is an exact selection: a test whose fixture closure includes a realdata fixture (``REALDATA_FIXTURES``)
is marked at collection, and ``need_realdata`` (behind every such fixture, and the one way for a
test to reach the material through a path constant) fails a test that is not marked. A test
function that names one of the path constants without the marker fails too.

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
from types import CodeType
from typing import Any

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


#: The repository's own engine bundle: a 320 px student for synthetic shapes (circle, square,
#: triangle, star, ring), with self-test images it is known to find instances on. Part of the
#: repository, so tests that need any working model (not COCO accuracy) run everywhere on it.
DEMO_BUNDLE = ROOT / "engines" / "demo"
DEMO_CLASS_NAMES = ("circle", "square", "triangle", "star", "ring")


def demo_images(folder: Path, count: int) -> Path:
    """``count`` 320x320 JPEGs of synthetic shapes in ``folder``: the demo bundle's self-test images,
    then mirrored copies of them when more are asked for (the demo model finds shapes on both)."""
    import cv2  # noqa: PLC0415 (only the tests that make images need it)

    sources = sorted((DEMO_BUNDLE / "selftest").glob("*.jpg"))
    assert sources, f"the demo bundle {DEMO_BUNDLE} has no self-test images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        source = sources[i % len(sources)]
        flips = i // len(sources)
        if flips == 0:
            (folder / source.name).write_bytes(source.read_bytes())
            continue
        image = cv2.imread(str(source))
        assert image is not None, f"cannot read {source}"
        mirrored = cv2.flip(image, 1 if flips % 2 else 0)
        assert cv2.imwrite(str(folder / f"{source.stem}-flip{flips}.jpg"), mirrored)
    return folder


def copy_images(source: Path, folder: Path, count: int) -> Path:
    """The first ``count`` images of ``source`` copied into ``folder`` (tests may damage the copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted(source.glob("*.jpg"))[:count]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


#: The fixtures that hand out real material; a test needing any of them, directly or through a
#: fixture of its own (test_pipeline's ``model``, ...), is marked ``realdata`` at collection.
REALDATA_FIXTURES = frozenset(
    {"model_640", "model_dynamic", "model_int8_320", "val_images", "val_annotations", "train_images"}
)
#: The path constants above: a test function naming one must carry the ``realdata`` marker.
REALDATA_CONSTANTS = frozenset(
    {"REALDATA", "MODEL_640", "MODEL_DYNAMIC", "MODEL_INT8_320", "VAL_IMAGES", "VAL_ANNOTATIONS", "TRAIN_IMAGES"}
)
_running: dict[str, pytest.Item] = {}  # the test being set up, run or torn down
_unmarked_readers: dict[str, str] = {}  # nodeid -> the constant its function names


def _names(code: CodeType) -> set[str]:
    """The global names a function's code uses, its nested functions and comprehensions included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _names(const)
    return names


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("realdata") is not None:
            continue
        if REALDATA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)
            continue
        code = getattr(getattr(item, "function", None), "__code__", None)
        named = sorted(REALDATA_CONSTANTS & _names(code)) if isinstance(code, CodeType) else []
        if named:
            _unmarked_readers[item.nodeid] = named[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    _running["item"] = item
    try:
        yield
    finally:
        _running.pop("item", None)


@pytest.hookimpl(tryfirst=True)  # before the test function runs
def pytest_runtest_call(item: pytest.Item) -> None:
    constant = _unmarked_readers.get(item.nodeid)
    if constant is not None:
        pytest.fail(
            f"{item.nodeid} names the real-material path {constant} but is not marked realdata: request "
            "a realdata fixture (tests/conftest.py) or add @pytest.mark.realdata",
            pytrace=False,
        )


def need_realdata(path: Path) -> Path:
    """``path`` of the real material; skips the running test where it is missing, and fails it,
    present or not, where the test is not marked ``realdata`` (``-m "not realdata"`` would run it)."""
    item = _running.get("item")
    if item is not None and item.get_closest_marker("realdata") is None:
        pytest.fail(
            f"{item.nodeid} reads real test material ({path}) but is not marked realdata: request a realdata "
            "fixture (tests/conftest.py) or add @pytest.mark.realdata",
            pytrace=False,
        )
    if not path.exists():
        pytest.skip(f"real test material missing: {path} (expected ../shared/realdata)")
    return path


_need = need_realdata


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


@pytest.fixture(scope="session")
def train_images() -> Path:
    return _need(TRAIN_IMAGES)


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
