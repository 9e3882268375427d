"""The adaptive picker's decisions: pure logic over numbers, no clock, no threads, no model.

The picker walks one ordered ladder of *rungs*, lowest quality first::

    (smallest, effort E) ... (smallest, effort 1)  (smallest, full)  (next size, full) ... (largest, full)

so "lower the post-processing effort" is what stepping down means once the smallest resolution
is reached, and effort comes back before resolution goes up. Everything is expressed as a cost
in milliseconds, lower is better: the frame period (1000 / FPS) for an FPS goal, the per-frame
processing latency for a latency budget. With ``limit`` the goal (1000 / target FPS, or the
budget) and ``fit = limit / (1 + headroom)``:

* **down** when the current rung's measured cost exceeds ``fit * (1 + hysteresis)``: to the
  largest lower rung predicted to fit (cost <= ``fit``); when no size fits, to the smallest size,
  then one effort level at a time;
* **up** when not down and a higher rung is predicted at or below ``fit * (1 - hysteresis)``:
  to the largest such rung;
* neither before ``min_dwell_frames`` measured frames *and* ``min_dwell_s`` seconds at the
  current rung, so that a decision is never taken on a half-settled average.

The band between the up and down lines (a factor ``(1 + h) / (1 - h)``, 1.22 at the default
0.1) is what keeps a steady load from flapping. A wrong prediction could still make a step up
fail. A step down that undoes a step up within ``probe_dwells`` dwells (at most that many times
``min_dwell_frames`` frames *or* ``min_dwell_s`` seconds at the rung, so the window always
includes the first chance to decide) is a failed probe: it blocks that rung and every rung above
it for ``retry_backoff_s``, doubled on each further failure (at most 64x). An oscillation is at
most one probe per back-off period, and a failing probe backs off exponentially. A step down
later than that is a change of load, and blocks nothing.

``decide`` never changes the picker; ``commit`` records a decision that was applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["fps", "latency"]
Action = Literal["stay", "down", "up"]

#: Largest back-off multiplier after repeated failed step-ups (2**6).
MAX_BACKOFF_DOUBLINGS = 6
#: A step down within this many dwells of a step up undoes a failed probe.
PROBE_DWELLS = 2.0


@dataclass(frozen=True, order=True)
class Rung:
    """A resolution and a post-processing effort level (0 = full, higher = cheaper)."""

    size: int
    effort: int = 0

    def describe(self, effort_names: Sequence[str] = ()) -> str:
        if self.effort == 0:
            return str(self.size)
        name = effort_names[self.effort] if self.effort < len(effort_names) else f"effort {self.effort}"
        return f"{self.size}/{name}"


def build_rungs(sizes: Sequence[int], effort_levels: int) -> tuple[Rung, ...]:
    """The ladder, lowest first: the smallest size at each reduced effort, then every size at full effort."""
    ordered = sorted(set(sizes))
    if not ordered:
        raise ValueError("the picker needs at least one size")
    if effort_levels < 0:
        raise ValueError("effort_levels must be >= 0")
    low = [Rung(ordered[0], e) for e in range(effort_levels, 0, -1)]
    return (*low, *(Rung(s, 0) for s in ordered))


@dataclass(frozen=True)
class Goal:
    """What the picker aims for, as a cost limit in milliseconds."""

    mode: Mode
    limit_ms: float

    @classmethod
    def fps(cls, target_fps: float) -> Goal:
        if target_fps <= 0:
            raise ValueError("target_fps must be > 0")
        return cls("fps", 1000.0 / target_fps)

    @classmethod
    def latency(cls, budget_ms: float) -> Goal:
        if budget_ms <= 0:
            raise ValueError("latency budget must be > 0")
        return cls("latency", budget_ms)

    def show(self, ms: float) -> str:
        """A cost as the goal's unit: FPS for a rate goal, milliseconds for a latency goal."""
        if self.mode == "fps":
            return f"{1000.0 / ms:.1f} FPS" if ms > 0 else "inf FPS"
        return f"{ms:.1f} ms"

    def describe(self) -> str:
        return f"target {self.show(self.limit_ms)}" if self.mode == "fps" else f"budget {self.show(self.limit_ms)}"


@dataclass(frozen=True)
class PickerParams:
    """The picker's tuning; see the module docstring for how each is used."""

    goal: Goal
    headroom: float = 0.10
    hysteresis: float = 0.10
    min_dwell_s: float = 3.0
    min_dwell_frames: int = 15
    retry_backoff_s: float = 30.0
    probe_dwells: float = PROBE_DWELLS

    def __post_init__(self) -> None:
        if self.headroom < 0 or not 0 <= self.hysteresis < 1:
            raise ValueError("expected headroom >= 0 and 0 <= hysteresis < 1")
        if self.min_dwell_s < 0 or self.min_dwell_frames < 0 or self.retry_backoff_s < 0:
            raise ValueError("dwell and back-off must be >= 0")

    @property
    def fit_ms(self) -> float:
        """A rung fits when its predicted cost is at most this."""
        return self.goal.limit_ms / (1.0 + self.headroom)

    @property
    def down_ms(self) -> float:
        """Measured cost above which the current rung is abandoned."""
        return self.fit_ms * (1.0 + self.hysteresis)

    @property
    def up_ms(self) -> float:
        """Predicted cost at or below which a higher rung is taken."""
        return self.fit_ms * (1.0 - self.hysteresis)

    def within_probe(self, frames: int, seconds: float) -> bool:
        """A step down after ``frames`` frames and ``seconds`` at a rung still undoes its probe."""
        return frames <= self.probe_dwells * self.min_dwell_frames or seconds <= self.probe_dwells * self.min_dwell_s


@dataclass(frozen=True)
class Observation:
    """What was measured at the current rung, and what the other rungs are predicted to cost.

    Attributes:
        metric_ms: the current rung's measured cost (moving average), milliseconds.
        predicted_ms: predicted cost of other rungs under the same load; rungs missing here are
            never chosen (no prediction yet, or a model still loading).
        frames: frames measured at the current rung since the last switch.
        seconds: seconds since the last switch.
        now: a monotonic time, seconds (for back-off).
    """

    metric_ms: float
    predicted_ms: Mapping[Rung, float]
    frames: int
    seconds: float
    now: float


@dataclass(frozen=True)
class Decision:
    """What to do, and why, in words for the log and the dashboard."""

    action: Action
    previous: Rung
    rung: Rung
    reason: str

    @property
    def switches(self) -> bool:
        return self.rung != self.previous


@dataclass
class Picker:
    """Decisions over ``rungs`` for ``params``, starting at ``start``.

    Args:
        params: goal, margins, dwell and back-off.
        rungs: the ladder, lowest first (``build_rungs``).
        start: the rung running now.
        effort_names: names of effort levels for reasons (index 0 = "full").
    """

    params: PickerParams
    rungs: tuple[Rung, ...]
    start: Rung
    effort_names: Sequence[str] = ()
    _index: int = field(init=False)
    _probe: int | None = field(init=False, default=None)  # the rung the last step up entered
    _failures: dict[int, int] = field(init=False, default_factory=dict)
    _blocked_until: dict[int, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.start not in self.rungs:
            raise ValueError(f"start rung {self.start} is not one of {self.rungs}")
        self._index = self.rungs.index(self.start)

    @property
    def current(self) -> Rung:
        return self.rungs[self._index]

    def blocked(self, now: float) -> dict[Rung, float]:
        """Rungs a failed step-up has blocked, with the time each is blocked until."""
        return {self.rungs[i]: t for i, t in self._blocked_until.items() if t > now}

    def _name(self, rung: Rung) -> str:
        return rung.describe(self.effort_names)

    def decide(self, obs: Observation) -> Decision:
        """The decision for ``obs``; does not change the picker."""
        p, g, cur = self.params, self.params.goal, self.current
        if obs.frames < p.min_dwell_frames or obs.seconds < p.min_dwell_s:
            return Decision("stay", cur, cur, f"settling at {self._name(cur)}: {obs.frames}/{p.min_dwell_frames} "
                            f"frames, {obs.seconds:.1f}/{p.min_dwell_s:.1f} s")
        measured = g.show(obs.metric_ms)
        if obs.metric_ms > p.down_ms:
            return self._down(obs, measured)
        # Everything above the lowest blocked rung may be probed.
        ceiling = min((i for i, t in self._blocked_until.items() if t > obs.now), default=len(self.rungs))
        ups = [i for i in range(self._index + 1, ceiling)
               if self.rungs[i] in obs.predicted_ms and obs.predicted_ms[self.rungs[i]] <= p.up_ms]
        if ups:
            to = self.rungs[max(ups)]
            return Decision("up", cur, to, (
                f"up {self._name(cur)} -> {self._name(to)}: {measured} measured; {self._name(to)} predicted "
                f"{g.show(obs.predicted_ms[to])}, within the fit line less {p.hysteresis:.0%} "
                f"({g.show(p.up_ms)}; {g.describe()}, {p.headroom:.0%} headroom)"))
        return Decision("stay", cur, cur, f"holding {self._name(cur)}: {measured} measured, within "
                        f"{g.show(p.down_ms)} (down line) and no higher rung predicted under {g.show(p.up_ms)}")

    def _down(self, obs: Observation, measured: str) -> Decision:
        p, g, cur = self.params, self.params.goal, self.current
        over = f"{measured} measured, past the down line {g.show(p.down_ms)} ({g.describe()}, {p.headroom:.0%} " \
               f"headroom, {p.hysteresis:.0%} hysteresis)"
        fits = [i for i in range(self._index)
                if self.rungs[i] in obs.predicted_ms and obs.predicted_ms[self.rungs[i]] <= p.fit_ms]
        if fits:
            to = self.rungs[max(fits)]
            return Decision("down", cur, to, f"down {self._name(cur)} -> {self._name(to)}: {over}; {self._name(to)} "
                            f"predicted {g.show(obs.predicted_ms[to])} fits ({g.show(p.fit_ms)})")
        smallest = self.rungs.index(Rung(min(r.size for r in self.rungs), 0))
        if self._index > smallest:
            to = self.rungs[smallest]
            return Decision("down", cur, to, f"down {self._name(cur)} -> {self._name(to)}: {over}; no size is "
                            f"predicted to fit ({g.show(p.fit_ms)}), taking the smallest")
        if self._index > 0:
            to = self.rungs[self._index - 1]
            return Decision("down", cur, to, f"down {self._name(cur)} -> {self._name(to)}: {over} even at the "
                            f"smallest size; lowering post-processing effort")
        return Decision("stay", cur, cur, f"at the lowest rung {self._name(cur)}: {over}; nothing cheaper to try")

    def commit(self, decision: Decision, obs: Observation) -> None:
        """Record that ``decision``, taken on ``obs``, was applied."""
        if not decision.switches:
            return
        if decision.previous != self.current:
            raise ValueError(f"decision from {decision.previous} but the picker is at {self.current}")
        left, to = self._index, self.rungs.index(decision.rung)
        if self._probe == left:
            if decision.action == "down" and self.params.within_probe(obs.frames, obs.seconds):
                n = self._failures[left] = self._failures.get(left, 0) + 1
                backoff = self.params.retry_backoff_s * 2 ** min(n - 1, MAX_BACKOFF_DOUBLINGS)
                self._blocked_until[left] = obs.now + backoff
            else:
                self._failures.pop(left, None)
        self._probe = to if decision.action == "up" else None
        self._index = to
