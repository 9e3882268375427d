"""A daemon serving several cameras: a reload adds or removes cameras while the others run on in
the same pipeline; an invalid camera list is refused and the running set stays; a camera whose
capture hangs is restarted alone by the watchdog tick.

End to end on the repository's demo bundle, with looping image folders as cameras.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import List, Optional

import pytest
from test_service_daemon_reload import Served as DaemonServed
from test_service_daemon_reload import _wait

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo"


class Served(DaemonServed):
    """A daemon serving a ``cameras:`` list of looping image folders (start, reload and stop as
    in test_service_daemon_reload)."""

    def write(self, cameras: List[str], extra: str = "") -> None:  # type: ignore[override]
        listed = "".join(f"  - {{name: {name}, uri: '{self.images}', loop: true}}\n" for name in cameras)
        self.config.write_text(
            f"model:\n  path: {DEMO}\n  threads: 1\n"
            f"cameras:\n{listed}"
            f"engines:\n  pid_file: {self.pid_file}\n{extra}"
        )

    def processed(self, camera: str) -> int:
        generation = self.daemon.session.generation if self.daemon is not None else None
        assert generation is not None
        return next(c.processed for c in generation.pipeline.cameras() if c.name == camera)

    def names(self) -> List[str]:
        generation = self.daemon.session.generation if self.daemon is not None else None
        assert generation is not None
        return generation.pipeline.camera_names()


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.stop()


def test_a_reload_adds_and_removes_cameras_while_the_others_run_on(served: Served) -> None:
    served.write(["gate", "yard"])
    daemon = served.start()
    generation = daemon.session.generation
    assert generation is not None
    _wait(lambda: served.processed("gate") > 5, "frames of gate")

    served.write(["gate", "yard", "door"])
    verdict = served.reload()
    assert verdict.ok and "added door" in verdict.message, verdict.message
    assert daemon.session.generation is generation  # the same pipeline: nothing was rebuilt
    assert served.names() == ["gate", "yard", "door"]
    gate_before = served.processed("gate")
    _wait(lambda: served.processed("door") > 3, "frames of the added camera")
    assert served.processed("gate") > gate_before  # gate never stopped

    served.write(["gate", "door"])
    verdict = served.reload()
    assert verdict.ok and "removed yard" in verdict.message, verdict.message
    assert daemon.session.generation is generation
    assert served.names() == ["gate", "door"]
    assert daemon.session.config().camera_specs()[1].name == "door"  # the session runs the new file
    stats = daemon.stats()
    assert [c["name"] for c in stats["cameras"]] == ["gate", "door"]


def test_an_invalid_camera_list_is_refused_and_the_running_set_stays(served: Served) -> None:
    served.write(["gate", "yard"])
    daemon = served.start()
    generation = daemon.session.generation
    served.write(["gate", "gate"])
    verdict = served.reload()
    assert not verdict.ok
    assert "camera name 'gate' is used twice" in verdict.message
    assert "\n" not in verdict.message
    assert daemon.session.generation is generation
    assert served.names() == ["gate", "yard"]
    served.write(["gate", "status"])
    verdict = served.reload()
    assert not verdict.ok and "reserved" in verdict.message, verdict.message
    assert served.names() == ["gate", "yard"]


def test_a_camera_that_cannot_be_opened_refuses_the_reload(served: Served, tmp_path: Path) -> None:
    served.write(["gate"])
    served.start()
    text = served.config.read_text().replace(
        "cameras:\n", f"cameras:\n  - {{name: gone, uri: '{tmp_path / 'missing.mp4'}'}}\n")
    served.config.write_text(text)
    verdict = served.reload()
    assert not verdict.ok and "missing.mp4" in verdict.message, verdict.message
    assert served.names() == ["gate"]


def test_the_watchdog_tick_restarts_a_stuck_camera_alone(served: Served) -> None:
    served.write(["gate", "yard"], extra="service:\n  stall_s: 2\n")
    daemon = served.start()
    generation = daemon.session.generation
    assert generation is not None
    lane = next(lane for lane in generation.pipeline._all if lane.name == "yard")
    release = threading.Event()
    original = lane.source.read

    def hang(timeout: Optional[float] = None) -> object:
        release.wait(30)
        return original(timeout)

    lane.source.read = hang  # type: ignore[method-assign]  # the driver hangs inside read
    try:
        _wait(lambda: next(c.restarts for c in generation.pipeline.cameras() if c.name == "yard") == 1,
              "the stuck camera's restart", timeout=30)
        yard = served.processed("yard")
        _wait(lambda: served.processed("yard") > yard + 3, "frames of the restarted camera")
        assert next(c.restarts for c in generation.pipeline.cameras() if c.name == "gate") == 0
        assert daemon.session.generation is generation
    finally:
        release.set()
