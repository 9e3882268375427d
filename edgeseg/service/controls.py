"""The dashboard's controls, applied to the running daemon.

Thresholds and NMS mode replace the postprocessor's settings object (read once per frame, so
the next frame uses them; the adaptive controller adopts them as its new full-effort base). A
fixed resolution pins the processor to that rung of the model ladder and suspends the picker;
"auto" hands control back to it. A source switch is a reload with the new URI laid over the
config, so it goes through the same checks, and falls back the same way, as SIGHUP.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edgeseg.postprocess.settings import NmsMethod
from edgeseg.sources.uri import mask_credentials

if TYPE_CHECKING:
    from edgeseg.adaptive.ladder import ModelLadder
    from edgeseg.service.daemon import Daemon


class DaemonControls:
    """``edgeseg.dashboard.controls.Controls`` over a running Daemon."""

    def __init__(self, daemon: Daemon, open_ladder: Callable[[], ModelLadder]):
        self._daemon = daemon
        self._open_ladder = open_ladder
        self._lock = threading.Lock()
        self.fixed_size: int | None = None

    def _processor(self) -> Any:
        active = self._daemon.active
        if active is None:
            raise ValueError("the pipeline is restarting; try again")
        return active.runtime.processor

    def _update(self, **changes: Any) -> None:
        with self._lock:
            processor = self._processor()
            processor.postprocessor.settings = replace(processor.postprocessor.settings, **changes)

    def set_conf_threshold(self, value: float) -> None:
        self._update(conf_threshold=value)

    def set_nms(self, method: NmsMethod) -> None:
        self._update(nms=method)

    def set_resolution(self, size: int | None) -> None:
        with self._lock:
            if size is None:
                self.fixed_size = None
                return
            ladder = self._open_ladder()
            if size not in ladder.sizes:
                raise ValueError(f"resolution {size}: expected one of {list(ladder.sizes)} or auto")
            self._processor().switch(ladder.get(size))
            self.fixed_size = size

    def set_source(self, uri: str) -> None:
        self._daemon.switch_source(uri)

    def set_paused(self, paused: bool) -> None:
        active = self._daemon.active
        if active is None:
            raise ValueError("the pipeline is restarting; try again")
        active.pipeline.set_paused(paused)

    def resolutions(self) -> list[int]:
        try:
            return list(self._open_ladder().sizes)
        except Exception:  # a model without a ladder still gets the rest of the page
            return []

    def state(self) -> dict[str, Any]:
        active = self._daemon.active
        if active is None:
            return {}
        settings = active.runtime.processor.postprocessor.settings
        return {
            "conf_threshold": settings.conf_threshold,
            "nms": settings.nms,
            "resolution": "auto" if self.fixed_size is None else self.fixed_size,
            "source": mask_credentials(active.config.source.uri or ""),
            "paused": active.pipeline.paused,
            "resolutions": self.resolutions(),
        }
