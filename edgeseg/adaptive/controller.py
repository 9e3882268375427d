"""Glue between a running pipeline and the picker: measure each frame, apply each decision.

``AdaptiveController.observe(result)`` is called for every frame result, in the pipeline's
output thread (``Pipeline(on_result=...)``). It

1. ignores the frames still in flight from before the last switch and the first
   ``warmup_frames`` after it (a new shape's first inference is slow);
2. folds the frame's inference latency into the resolution table and the frame's cost into a
   moving average: for an FPS goal the interval between results (what the pipeline delivers),
   or, for a live source that never drops a frame (the camera, not edgeseg, sets the pace),
   the busiest stage thread's time per frame; for a latency budget the frame's processing time
   (preprocess to sinks, not the wait for the camera);
3. predicts every other rung from the table (see ``table.py``) and asks the picker;
4. applies a switch: ``processor.switch`` to the ladder's model for the new size (a bundle's
   engine not loaded yet is loaded in the background first, and the switch waits for it) and
   asks the owner of the post-processing settings to apply the new effort level; logs it at
   INFO with its reason and keeps it in a bounded history for the dashboard.

The controller never writes the processor's settings itself: their owner (``EffortOwner``)
derives them, ``effort_settings(settings as the user set them, steps, level)``. In the daemon
that is ``edgeseg.service.session.Session``, which the dashboard changes too; where nothing
else changes them (a benchmark, a bare pipeline) ``PickerOnlySettings`` is the owner.

What an effort level saves is not predicted: it depends on the scene (how many instances, how
large) and on which stage is the bottleneck. Effort is lowered one level per dwell while the
smallest size is over the line and raised as soon as the measured cost is under the up line; a
raise that was premature is undone within the probe window and then backed off by the picker.

Effort levels, cumulative, applied only below the smallest size: "no-refine" (morphological
refinement off: the dearest per-instance step), "fewer-detections" (max_detections halved:
fewer masks to build), "boxes-only" (no masks: results carry boxes only, which changes what
subscribers receive, so it is opt-in). A step that changes nothing for the configured settings
(refinement already off, masks already off) is left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Protocol

from edgeseg.adaptive.ladder import ModelLadder
from edgeseg.adaptive.picker import Decision, Goal, Observation, Picker, PickerParams, Rung, build_rungs
from edgeseg.adaptive.table import ResolutionTable
from edgeseg.config.adaptive import AdaptiveConfig, EffortStep
from edgeseg.errors import ConfigError
from edgeseg.model import LoadOptions, Model
from edgeseg.pipeline.processor import FrameProcessor
from edgeseg.postprocess.settings import PostprocessSettings, RefineSettings
from edgeseg.structures import FrameResult

log = logging.getLogger(__name__)

#: A live source counts as setting the pace once this many frames passed without a drop.
PACED_AFTER_FRAMES = 10
#: Stages that are not processing work: the wait for the source's next frame.
WAIT_STAGES = frozenset({"capture"})
#: Stages each non-inference thread runs per frame (for the busiest-thread cost).
CAPTURE_THREAD_STAGES = ("preprocess",)
OUTPUT_THREAD_STAGES = ("decode", "postprocess", "analytics", "sink")


class _PipelineLike(Protocol):
    @property
    def drops(self) -> int: ...

    @property
    def source(self) -> Any: ...


class EffortOwner(Protocol):
    """Who owns the processor's post-processing settings and applies effort levels to them."""

    def apply_effort(self, steps: Sequence[EffortStep], level: int) -> None:
        """Make ``effort_settings(<the settings as the user set them>, steps, level)`` the processor's."""


class PickerOnlySettings:
    """``EffortOwner`` of a processor whose settings nothing but the picker changes.

    The settings the processor has when this is made are the full-effort base for good; a
    pipeline whose settings someone else changes as well (the daemon's dashboard) needs an owner
    that both go through (``edgeseg.service.session.Session``).
    """

    def __init__(self, processor: FrameProcessor):
        self._processor = processor
        self._base = processor.postprocessor.settings

    def apply_effort(self, steps: Sequence[EffortStep], level: int) -> None:
        self._processor.postprocessor.settings = effort_settings(self._base, steps, level)


def effort_names(steps: Sequence[EffortStep]) -> list[str]:
    """Names of effort levels 0..len(steps): "full", then the cumulative reductions."""
    return ["full", *("+".join(steps[: i + 1]) for i in range(len(steps)))]


def active_steps(base: PostprocessSettings, steps: Sequence[EffortStep]) -> tuple[EffortStep, ...]:
    """The steps of ``steps`` that change something for ``base``."""
    def matters(step: EffortStep) -> bool:
        if step == "no-refine":
            return base.refine.enabled
        if step == "fewer-detections":
            return base.max_detections > 1
        return base.masks

    return tuple(s for s in steps if matters(s))


def effort_settings(base: PostprocessSettings, steps: Sequence[EffortStep], level: int) -> PostprocessSettings:
    """``base`` with the first ``level`` reductions of ``steps`` applied."""
    s = base
    for step in steps[:level]:
        if step == "no-refine":
            s = replace(s, refine=RefineSettings())
        elif step == "fewer-detections":
            s = replace(s, max_detections=max(1, base.max_detections // 2))
        else:
            s = replace(s, masks=False)
    return s


class Ewma:
    """Exponentially weighted mean, bias-corrected: the plain mean of the first few samples, then
    exponential forgetting (a first outlier does not linger as it does when the average starts
    at the first sample)."""

    def __init__(self, alpha: float):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha {alpha}: expected 0 < alpha <= 1")
        self.alpha = alpha
        self._sum = 0.0
        self._weight = 0.0

    @property
    def value(self) -> float | None:
        return self._sum / self._weight if self._weight else None

    def add(self, x: float) -> float:
        self._sum = (1 - self.alpha) * self._sum + self.alpha * x
        self._weight = (1 - self.alpha) * self._weight + self.alpha
        return self._sum / self._weight

    def reset(self) -> None:
        self._sum = self._weight = 0.0


@dataclass(frozen=True)
class Switch:
    """One applied switch, for the log and the dashboard.

    Attributes:
        time: wall-clock time (seconds since the epoch).
        frame_id: the frame whose result triggered it.
        action: "down" or "up".
        from_size, from_effort, to_size, to_effort: the rungs (effort 0 = full).
        effort_name: the new effort level's name.
        measured: the measured figure that triggered it, in the goal's unit ("9.1 FPS").
        reason: the whole reason in words.
    """

    time: float
    frame_id: int
    action: str
    from_size: int
    from_effort: int
    to_size: int
    to_effort: int
    effort_name: str
    measured: str
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {
            "time": round(self.time, 3), "frame_id": self.frame_id, "action": self.action,
            "from": {"size": self.from_size, "effort": self.from_effort},
            "to": {"size": self.to_size, "effort": self.to_effort, "effort_name": self.effort_name},
            "measured": self.measured, "reason": self.reason,
        }


@dataclass(frozen=True)
class AdaptiveState:
    """What the picker is doing now, for the dashboard and the stats topic.

    Attributes:
        goal: e.g. "target 15.0 FPS" or "budget 80.0 ms".
        size: input size in use (frames prepared from now on).
        effort, effort_name: post-processing effort level (0 = "full").
        measured_ms: the current rung's measured cost (frame period or processing latency), or None.
        measured: the same in the goal's unit ("12.3 FPS").
        switches: switches applied so far.
        reason: the latest decision's reason (also when it was to stay).
        pending_size: a size being loaded before a switch to it, or None.
        blocked: sizes (with effort) a failed step up has blocked, as "416" strings.
        sizes: every size of the ladder.
        ladder: "dynamic", "bundle" or "static".
    """

    goal: str
    size: int
    effort: int
    effort_name: str
    measured_ms: float | None
    measured: str
    switches: int
    reason: str
    pending_size: int | None
    blocked: tuple[str, ...]
    sizes: tuple[int, ...]
    ladder: str

    def as_dict(self) -> dict[str, object]:
        return {
            "goal": self.goal, "size": self.size, "effort": self.effort, "effort_name": self.effort_name,
            "measured_ms": None if self.measured_ms is None else round(self.measured_ms, 2),
            "measured": self.measured, "switches": self.switches, "reason": self.reason,
            "pending_size": self.pending_size, "blocked": list(self.blocked), "sizes": list(self.sizes),
            "ladder": self.ladder,
        }


def params_from_config(config: AdaptiveConfig) -> PickerParams:
    """The picker's parameters from the ``adaptive:`` section."""
    if config.target_fps is not None:
        goal = Goal.fps(config.target_fps)
    elif config.latency_budget_ms is not None:
        goal = Goal.latency(config.latency_budget_ms)
    else:
        raise ConfigError("field 'adaptive': set target_fps or latency_budget_ms")
    return PickerParams(goal, config.headroom, config.hysteresis, config.min_dwell_s, config.min_dwell_frames,
                        config.retry_backoff_s)


class AdaptiveController:
    """Feeds frame measurements to the table and the picker and applies its switches.

    Args:
        processor: the running pipeline's FrameProcessor (its model is what gets switched; its
            settings at this point, the full-effort ones, decide which effort steps matter).
        ladder: models per size for the processor's network.
        config: the ``adaptive:`` section.
        workers: inference workers of the pipeline.
        clock: monotonic seconds (a test may pass its own).
        owner: applies effort levels to the post-processing settings (default: a
            ``PickerOnlySettings`` over ``processor``, for a pipeline nothing else changes).
    """

    def __init__(
        self,
        processor: FrameProcessor,
        ladder: ModelLadder,
        config: AdaptiveConfig,
        workers: int = 1,
        clock: Callable[[], float] = time.monotonic,
        owner: Optional[EffortOwner] = None,
    ):
        self.processor = processor
        self.ladder = ladder
        self.config = config
        self.workers = workers
        self._clock = clock
        self.params = params_from_config(config)
        self.goal = self.params.goal
        self.owner: EffortOwner = owner if owner is not None else PickerOnlySettings(processor)
        self.steps = active_steps(processor.postprocessor.settings, config.effort_steps)
        self.effort_names = effort_names(self.steps)
        self.table = ResolutionTable(ladder.sizes, ladder.seed_ms(), config.ewma_alpha, workers)
        size = max(processor.input_size)
        if size not in ladder.sizes:
            size = max((s for s in ladder.sizes if s <= size), default=ladder.sizes[0])
            processor.switch(ladder.get(size))
        self.rungs = build_rungs(ladder.sizes, len(self.steps))
        self.picker = Picker(self.params, self.rungs, Rung(size, 0), self.effort_names)
        self._lock = threading.Lock()
        self._history: deque[Switch] = deque(maxlen=config.history)
        self._switches = 0
        self._reason = f"starting at {size}"
        self._pending: int | None = None
        self._failed_sizes: set[int] = set()
        self._live = False
        #: Cameras sharing the model (``attach``); a rate goal is each camera's rate.
        self.cameras = 1
        self._drops: Callable[[], int] | None = None
        self._metric = Ewma(config.ewma_alpha)
        self._drops_seen = 0
        # Results since the drop counter last rose (not reset by switches); no drop yet counts as paced.
        self._since_drop = PACED_AFTER_FRAMES + 1
        self._paced = False
        self._reset(clock())

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, pipeline: _PipelineLike) -> None:
        """Read the pipeline's drop counter, source kind (live sources set their own pace) and
        number of cameras (a rate goal is per camera: the picker fits them all)."""
        self._live = bool(getattr(pipeline, "live", getattr(pipeline.source, "live", False)))
        self._drops = lambda: pipeline.drops
        self._drops_seen = pipeline.drops
        names = getattr(pipeline, "camera_names", None)
        self.set_cameras(len(names()) if callable(names) else 1)

    def set_cameras(self, n: int) -> None:
        """The number of cameras sharing the model: a rate goal's cost is measured for all of
        them (see ``_frame_cost``); a change starts the average again."""
        n = max(1, n)
        if n != self.cameras:
            self.cameras = n
            with self._lock:
                self._metric.reset()

    def close(self) -> None:
        """Close the models the ladder loaded; call after the pipeline has been joined."""
        self.ladder.close()

    def resume(self) -> None:
        """Take the pipeline back after a pause (a fixed resolution): the processor returns to the
        picker's rung (its size and effort) and measuring starts again there, as after a switch.

        Called by the owner that paused it, which stops feeding ``observe`` while paused.
        """
        rung = self.picker.current
        self.processor.switch(self.ladder.get(rung.size))  # held: the picker ran at it
        self.owner.apply_effort(self.steps, rung.effort)
        self.table.restart(rung.size)
        self._reset(self._clock())
        with self._lock:
            self._reason = f"resumed at {rung.describe(self.effort_names)}"
            self._pending = None

    # -- per frame -----------------------------------------------------------------------------

    def _reset(self, now: float) -> None:
        """Start measuring a new rung."""
        self._since = now
        self._frames = 0
        self._skip = self.config.warmup_frames
        self._last_t: float | None = None
        with self._lock:
            self._metric.reset()

    def observe(self, result: FrameResult) -> Decision | None:
        """Measure one frame; the switch applied because of it, if any."""
        now = self._clock()
        rung = self.picker.current
        if max(result.resolution) != rung.size:
            return None  # prepared before the last switch
        if self._skip > 0:
            self._skip -= 1
            self._last_t = now
            return None
        lat = result.latency_ms
        infer = lat.get("infer")
        if infer is not None:
            self.table.observe(rung.size, infer, now)
        cost = self._frame_cost(lat, now)
        self._last_t = now
        if cost is None:
            return None
        with self._lock:
            metric = self._metric.add(cost)
        self._frames += 1
        obs = Observation(metric, self._predictions(metric), self._frames, now - self._since, now)
        decision = self.picker.decide(obs)
        if not decision.switches:
            with self._lock:
                self._reason = decision.reason
                self._pending = None
            return None
        return self._apply(decision, obs, result.frame.frame_id)

    def _frame_cost(self, lat: dict[str, float], now: float) -> float | None:
        """This frame's sample of the goal's cost in ms; None when there is none yet.

        With several cameras a rate goal is each camera's rate, and the cost is what one frame
        of every camera costs together: the shared inference's time for all of them (each
        frame's ``infer`` is its share of its batch), or the interval between results times the
        number of cameras (results of all cameras interleave). Capture and output threads are
        per camera and run side by side. So the picker chooses the size at which all cameras
        together fit, the same size for all of them (a camera that pins ``imgsz`` keeps its own).
        """
        if self.goal.mode == "latency":
            return sum(ms for stage, ms in lat.items() if stage not in WAIT_STAGES)
        busy = max(lat.get("infer", 0.0) * self.cameras / self.workers,
                   sum(lat.get(s, 0.0) for s in CAPTURE_THREAD_STAGES),
                   sum(lat.get(s, 0.0) for s in OUTPUT_THREAD_STAGES))
        paced = self._source_paced()
        if paced != self._paced:  # what the average means changes: start it again
            self._paced = paced
            with self._lock:
                self._metric.reset()
        if paced:
            return busy
        if self._last_t is None:
            return None
        return (now - self._last_t) * 1e3 * self.cameras

    def _source_paced(self) -> bool:
        """A live source that has not dropped a frame lately sets the pace: intervals say nothing.

        Then the cost is the busiest stage thread's time per frame, what edgeseg could deliver.
        """
        if self._drops is not None:
            drops = self._drops()
            self._since_drop = 0 if drops > self._drops_seen else self._since_drop + 1
            self._drops_seen = drops
        return self._live and self._since_drop > PACED_AFTER_FRAMES

    def _predictions(self, metric: float) -> dict[Rung, float]:
        """Predicted cost of every rung under the current load.

        A size: the cost now plus the difference in inference time (divided among the workers
        for a rate goal), never less than that inference time alone. An effort level: the same
        as the smallest size at full effort (its saving is not predicted, see above).
        """
        cur = self.picker.current
        infer_now = self.table.measured_ms(cur.size)
        if infer_now is None:
            return {cur: metric}
        k = self.cameras / self.workers if self.goal.mode == "fps" else 1.0
        out: dict[Rung, float] = {}
        for r in self.rungs:
            if r.effort or r.size in self._failed_sizes:
                continue
            pred = self.table.predict_ms(r.size, cur.size)
            if pred is not None:
                out[r] = max(metric + (pred - infer_now) * k, pred * k)
        smallest = out.get(Rung(self.ladder.sizes[0], 0))
        if smallest is not None:
            out.update({r: smallest for r in self.rungs if r.effort})
        out[cur] = metric
        return out

    def _apply(self, decision: Decision, obs: Observation, frame_id: int) -> Decision | None:
        to, cur = decision.rung, decision.previous
        if to.size != cur.size:
            if not self.ladder.ready(to.size):
                if self.ladder.error(to.size) is not None:
                    self._failed_sizes.add(to.size)
                    return None
                self.ladder.prefetch(to.size)
                with self._lock:
                    self._pending = to.size
                    self._reason = f"{decision.reason} (loading {to.size} first)"
                return None
            model: Model = self.ladder.get(to.size)
        if to.effort != cur.effort:
            self.owner.apply_effort(self.steps, to.effort)
        if to.size != cur.size:
            self.processor.switch(model)
            self.table.restart(to.size)
        self.picker.commit(decision, obs)
        record = Switch(time.time(), frame_id, decision.action, cur.size, cur.effort, to.size, to.effort,
                        self.effort_names[to.effort], self.goal.show(obs.metric_ms), decision.reason)
        with self._lock:
            self._history.append(record)
            self._switches += 1
            self._reason = decision.reason
            self._pending = None
        log.info("adaptive: %s", decision.reason)
        self._reset(obs.now)
        return decision

    # -- for the dashboard and the stats topic -------------------------------------------------

    def state(self) -> AdaptiveState:
        rung = self.picker.current
        with self._lock:
            metric = self._metric.value
            return AdaptiveState(
                goal=self.goal.describe(), size=rung.size, effort=rung.effort,
                effort_name=self.effort_names[rung.effort], measured_ms=metric,
                measured="" if metric is None else self.goal.show(metric), switches=self._switches,
                reason=self._reason, pending_size=self._pending,
                blocked=tuple(r.describe(self.effort_names) for r in self.picker.blocked(self._clock())),
                sizes=self.ladder.sizes, ladder=self.ladder.kind,
            )

    def history(self) -> list[Switch]:
        """The most recent switches, oldest first (at most ``config.history``)."""
        with self._lock:
            return list(self._history)

    def snapshot(self) -> dict[str, Any]:
        """State, switch history and table as JSON-able values (dashboard, MQTT stats)."""
        return {
            **self.state().as_dict(),
            "history": [s.as_dict() for s in self.history()],
            "table": [r.as_dict() for r in self.table.rows()],
        }


def open_adaptive(
    config: AdaptiveConfig,
    model_path: str | Path,
    model: Model,
    processor: FrameProcessor,
    options: Optional[LoadOptions] = None,
    owner: Optional[EffortOwner] = None,
) -> AdaptiveController:
    """The ladder of ``model`` (loaded from ``model_path`` with ``options``) and a controller over
    ``processor`` whose effort levels ``owner`` applies (see ``AdaptiveController``)."""
    options = options or LoadOptions()
    ladder = ModelLadder.open(model_path, model, config.resolutions, options)
    try:
        if config.preload:
            ladder.preload()
        controller = AdaptiveController(processor, ladder, config, workers=options.workers, owner=owner)
    except Exception:
        ladder.close()
        raise
    log.info("adaptive resolution: %s over %s sizes %s, effort levels %s", controller.goal.describe(), ladder.kind,
             list(ladder.sizes), controller.effort_names[1:] or "none")
    return controller
