"""Adaptive resolution: pick the largest input size (then the most post-processing effort) that meets
a target frame rate or latency budget, from measurements taken while the pipeline runs.

    ladder.py      a Model per input size (one session for a dynamic ONNX, one engine per size of a bundle)
    table.py       the resolution-performance table: manifest seeds, measured latencies, predictions
    picker.py      pure decisions with hysteresis, minimum dwell and back-off, each with its reason
    controller.py  per frame result: measure, decide, switch the running pipeline, keep the history
"""

from edgeseg.adaptive.controller import AdaptiveController, AdaptiveState, Switch, open_adaptive
from edgeseg.adaptive.ladder import ModelLadder
from edgeseg.adaptive.picker import Decision, Goal, Observation, Picker, PickerParams, Rung, build_rungs
from edgeseg.adaptive.table import ResolutionTable, TableRow

__all__ = [
    "AdaptiveController",
    "AdaptiveState",
    "Decision",
    "Goal",
    "ModelLadder",
    "Observation",
    "Picker",
    "PickerParams",
    "ResolutionTable",
    "Rung",
    "Switch",
    "TableRow",
    "build_rungs",
    "open_adaptive",
]
