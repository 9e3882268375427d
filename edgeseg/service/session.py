"""The one owner of the running pipeline's state: ``Session``.

The daemon runs one *generation* at a time (a configuration, its runtime, pipeline and picker; a
reload replaces it whole). Three parties change what it does while it runs:

* the daemon (main thread): begins and ends generations (``begin``, ``end``);
* the dashboard (HTTP threads, through ``DaemonControls``): the confidence threshold and NMS
  mode (``change_settings``), a fixed resolution or "auto" (``set_resolution``), pause;
* the adaptive picker (the pipeline's output thread): the input size, and an effort level that
  it asks the Session to apply (``apply_effort``: the Session is its ``EffortOwner``).

The rule: they read and change that state only through the Session, and only the Session
writes the processor's post-processing settings. It keeps the settings *as the user set them*
(the configuration, then the dashboard's changes) and the effort level the picker applied on
top, and derives the effective settings, ``effort_settings(user, steps, effort)``, whenever
either changes. Nobody reads the processor's settings back to guess what someone else did: that
is how a threshold changed under lowered effort once made the reduction permanent.

A fixed resolution suspends the picker (its frames are no longer fed to it) and runs the user's
settings in full, since the suspended picker could not raise a lowered effort again; "auto"
hands the processor back to the picker at its own rung (``AdaptiveController.resume``). A new
generation starts from its configuration: settings as configured, full effort, "auto".

One re-entrant lock guards it all. The picker runs under it (``observe``), so a dashboard change
and a picker switch never interleave, and its ``apply_effort`` re-enters it from the same
thread. Loading a fixed resolution's model (a bundle's engine: seconds) and opening a ladder
happen outside it, so the output thread never waits for a load.

``run`` and ``bench`` have no dashboard, and the picker alone needs no Session
(``PickerOnlySettings``): this lives with the service. ``adopt`` gives a bare processor a
Session (tests, the dashboard benchmark) so that they change settings by the daemon's path.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, List, Optional, Tuple

from edgeseg.adaptive.controller import AdaptiveController, effort_settings
from edgeseg.adaptive.ladder import ModelLadder
from edgeseg.app import Runtime, load_options
from edgeseg.config import Config
from edgeseg.config.adaptive import EffortStep
from edgeseg.monitor.metrics import StageHistograms
from edgeseg.pipeline.processor import FrameProcessor
from edgeseg.pipeline.runner import Pipeline
from edgeseg.postprocess.settings import PostprocessSettings
from edgeseg.structures import FrameResult

#: The answer to a change asked for while no generation runs (between the two halves of a reload).
RESTARTING = "the pipeline is restarting; try again"


@dataclass
class Generation:
    """What one start or reload of the daemon runs; the next reload replaces it whole.

    Attributes:
        config: the configuration it was built from.
        runtime: model, processor, source and this generation's sinks (``edgeseg.app.build_runtime``).
        pipeline: the threaded pipeline over them.
        histograms: per-stage latency histograms for /metrics.
        controller: the adaptive picker, when ``adaptive.enabled``.
        ladder: a fixed resolution's models where there is no picker (the Session opens it on
            first use; the picker's own ladder is ``controller.ladder``).
    """

    config: Config
    runtime: Runtime
    pipeline: Pipeline
    histograms: StageHistograms = field(default_factory=StageHistograms)
    controller: Optional[AdaptiveController] = None
    ladder: Optional[ModelLadder] = None

    def close(self) -> None:
        """After the pipeline has been joined: the ladders' extra models, then the runtime."""
        try:
            if self.controller is not None:
                self.controller.close()
            if self.ladder is not None:
                self.ladder.close()
        finally:
            self.runtime.close()


@dataclass(frozen=True)
class SessionView:
    """One consistent reading of the session, for the dashboard and tests.

    Attributes:
        settings: the post-processing settings as the user set them (configuration + dashboard).
        effective: what the processor runs: ``settings`` at the picker's effort level.
        effort: the effort level in force (0: full).
        fixed_size: the resolution the dashboard fixed, or None for "auto".
        source: the running source's URI ("" for a bare processor).
        paused: capture is held.
    """

    settings: PostprocessSettings
    effective: PostprocessSettings
    effort: int
    fixed_size: Optional[int]
    source: str
    paused: bool


class Session:
    """The running pipeline's state and its only writer; thread-safe (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._generation: Optional[Generation] = None
        self._processor: Optional[FrameProcessor] = None
        self._controller: Optional[AdaptiveController] = None
        self._user: Optional[PostprocessSettings] = None
        self._steps: Tuple[EffortStep, ...] = ()
        self._effort = 0
        self._fixed: Optional[int] = None

    # -- generations: the daemon's main thread ---------------------------------------------------

    def begin(self, generation: Generation) -> None:
        """Make ``generation`` the running one, before its pipeline starts.

        Its processor's settings (built from the configuration) are the user's; full effort,
        "auto" resolution. Nothing of the generation before carries over.
        """
        self._take(generation.runtime.processor, generation.controller, generation)

    def adopt(self, processor: FrameProcessor, controller: Optional[AdaptiveController] = None) -> None:
        """Own a bare processor's settings, without a daemon's generation (no source, no pipeline).

        Tests and the dashboard benchmark change settings through here, by the daemon's path.
        """
        self._take(processor, controller, None)

    def _take(self, processor: FrameProcessor, controller: Optional[AdaptiveController],
              generation: Optional[Generation]) -> None:
        with self._lock:
            self._generation, self._processor, self._controller = generation, processor, controller
            self._user = processor.postprocessor.settings
            self._steps, self._effort, self._fixed = (), 0, None

    def adopt_config(self, config: Config) -> None:
        """The running generation now runs ``config`` (a reload applied in place: cameras added
        or removed); nothing else of the session changes."""
        with self._lock:
            if self._generation is not None:
                self._generation.config = config

    def end(self) -> Optional[Generation]:
        """Forget the running generation (its pipeline joined); it is returned for closing."""
        with self._lock:
            generation = self._generation
            self._generation = self._processor = self._controller = None
            self._user = None
            self._steps, self._effort, self._fixed = (), 0, None
            return generation

    @property
    def generation(self) -> Optional[Generation]:
        """What runs now (None while a reload swaps generations, and for a bare processor)."""
        return self._generation

    def config(self) -> Config:
        """The running configuration; ``ValueError`` while there is none."""
        generation = self._generation
        if generation is None:
            raise ValueError(RESTARTING)
        return generation.config

    # -- the picker: the pipeline's output thread ----------------------------------------------------

    def observe(self, result: FrameResult) -> None:
        """``Pipeline(on_result=...)``: the histograms, and the picker unless a fixed resolution
        suspends it."""
        generation = self._generation
        if generation is not None:
            generation.histograms.observe(result)
        with self._lock:
            if self._controller is not None and self._fixed is None:
                self._controller.observe(result)

    def apply_effort(self, steps: Sequence[EffortStep], level: int) -> None:
        """The picker's effort level over the user's settings (``EffortOwner``)."""
        with self._lock:
            if self._processor is None:
                return  # nothing runs: the next generation starts at full effort anyway
            self._steps, self._effort = tuple(steps), level
            self._push()

    # -- the dashboard: HTTP threads ------------------------------------------------------------------

    def change_settings(self, **changes: Any) -> PostprocessSettings:
        """Change the user's settings (``PostprocessSettings`` fields); the effort level in force
        stays applied on top. Returns the user's settings after the change."""
        with self._lock:
            if self._user is None:
                raise ValueError(RESTARTING)
            self._user = replace(self._user, **changes)
            self._push()
            return self._user

    def set_resolution(self, size: Optional[int]) -> None:
        """Fix the input size (the picker is suspended, full effort) or, with None, hand it back
        to the picker ("auto"). ``ValueError`` for a size the model's ladder does not have."""
        if size is None:
            with self._lock:
                self._auto()
            return
        with self._lock:
            processor = self._processor  # which generation this is for
        ladder = self._ladder()
        if size not in ladder.sizes:
            raise ValueError(f"resolution {size}: expected one of {list(ladder.sizes)} or auto")
        model = ladder.get(size)  # may load a bundle's engine: outside the lock
        with self._lock:
            if self._processor is None or self._processor is not processor:
                raise ValueError(RESTARTING)
            self._processor.switch(model)
            self._fixed = size
            self._effort = 0
            self._push()

    def _auto(self) -> None:
        """Back to the picker at its own rung (or, without one, to the configured model)."""
        if self._fixed is None or self._processor is None:
            return
        self._fixed = None
        if self._controller is not None:
            self._controller.resume()  # its size, its effort (through apply_effort)
        elif self._generation is not None and self._generation.ladder is not None:
            self._processor.switch(self._generation.ladder.base)

    def resolutions(self) -> List[int]:
        """The sizes a fixed resolution may take (the model's ladder)."""
        return list(self._ladder().sizes)

    def _ladder(self) -> ModelLadder:
        """The picker's ladder, or one opened on first use (outside the lock: a bundle's manifest)."""
        with self._lock:
            if self._controller is not None:
                return self._controller.ladder
            generation = self._generation
            if generation is None:
                raise ValueError(RESTARTING if self._processor is None else "resolution: no model ladder here")
            if generation.ladder is not None:
                return generation.ladder
        c = generation.config
        ladder = ModelLadder.open(c.model.path or "", generation.runtime.model, c.adaptive.resolutions,
                                  load_options(c))
        with self._lock:
            first = generation.ladder
            if first is None:
                generation.ladder = ladder
                return ladder
        ladder.close()  # opened twice at once: keep the first
        return first

    def set_paused(self, paused: bool) -> None:
        """Hold or resume capture."""
        with self._lock:
            if self._generation is None:
                raise ValueError(RESTARTING)
            self._generation.pipeline.set_paused(paused)

    # -- reading ------------------------------------------------------------------------------------------

    def view(self) -> Optional[SessionView]:
        """The state now, read under the lock; None while nothing runs."""
        with self._lock:
            if self._processor is None or self._user is None:
                return None
            generation = self._generation
            return SessionView(
                settings=self._user,
                effective=self._processor.postprocessor.settings,
                effort=self._effort,
                fixed_size=self._fixed,
                source="" if generation is None else generation.config.source.uri or "",
                paused=False if generation is None else generation.pipeline.paused,
            )

    def _push(self) -> None:
        """Derive the effective settings and hand them to the processor (under the lock)."""
        assert self._processor is not None and self._user is not None
        self._processor.postprocessor.settings = effort_settings(self._user, self._steps, self._effort)
