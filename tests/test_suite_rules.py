"""The test suite's own rules (tests/conftest.py, pyproject.toml): the ``realdata`` marker is exact
and enforced, and every test runs under a time bound.

The marker rules are checked on a throwaway suite with a copy of the real conftest, run by pytest
in a subprocess with ``EDGESEG_REALDATA`` pointing at a folder that does not exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SUITE = '''
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import MODEL_640, need_realdata


@pytest.fixture()
def wrapped(val_images):
    return val_images


def test_fixture_user(model_640):
    raise AssertionError("runs only where the material is")


def test_wrapped_fixture_user(wrapped):
    raise AssertionError("runs only where the material is")


@pytest.mark.realdata
def test_marked_reader():
    need_realdata(MODEL_640)


def test_unmarked_reader_through_need():
    need_realdata(Path(os.environ["EDGESEG_REALDATA"]) / "models" / "other.onnx")


def test_unmarked_reader_of_a_constant():
    assert MODEL_640.name


def test_no_data():
    pass
'''


def _run(tmp_path: Path, *args: str) -> str:
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "test_probe.py").write_text(SUITE, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    realdata: needs real material\n")
    # Only skip reasons in the summary (-rs): a failure's message then appears once, in its own
    # section, whatever the terminal width (a wide terminal prints it whole in a -rA summary too).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "COLUMNS")}
    env.update(EDGESEG_REALDATA=str(tmp_path / "nonexistent"), COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "--strict-markers", *args],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )
    return proc.stdout + proc.stderr


def test_realdata_marker_is_added_and_enforced(tmp_path: Path) -> None:
    output = _run(tmp_path)
    # The two unmarked readers fail (present material or not); the three marked ones (two of them
    # marked by their fixtures) skip; the test without material passes.
    assert re.search(r"\b2 failed, 1 passed, 3 skipped in\b", output), output
    assert "test_unmarked_reader_through_need reads real test material" in output
    assert "test_unmarked_reader_of_a_constant names the real-material path MODEL_640" in output
    assert output.count("is not marked realdata") == 2, output
    assert output.count("real test material missing") == 3, output


def test_not_realdata_selects_exactly_the_tests_without_material(tmp_path: Path) -> None:
    selected = _run(tmp_path, "-m", "realdata", "--co")
    assert re.findall(r"::(\w+)$", selected, re.M) == ["test_fixture_user", "test_wrapped_fixture_user",
                                                       "test_marked_reader"], selected
    rest = _run(tmp_path, "-m", "not realdata", "--co")
    assert re.findall(r"::(\w+)$", rest, re.M) == ["test_unmarked_reader_through_need",
                                                   "test_unmarked_reader_of_a_constant", "test_no_data"], rest


def test_every_test_has_a_time_bound(request: pytest.FixtureRequest) -> None:
    """pytest-timeout is loaded and pyproject.toml bounds every test (see its comment for the value)."""
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed (the dev extra)"
    bound = float(request.config.getini("timeout"))
    assert 60 <= bound <= 1800
    assert request.config.getini("timeout_method") in ("signal", "thread")
    marker = request.node.get_closest_marker("timeout")
    assert marker is None  # the bound comes from the ini option, not from a marker on this test
