"""Which reloads only add or remove cameras, so that the others keep running untouched.

A reload normally rebuilds the whole pipeline (``edgeseg.service.reload_plan``). When the new
configuration differs from the running one only in which cameras the ``cameras:`` list holds
(every camera present in both is exactly as it was, and nothing outside the list changed), the
daemon adds and removes those cameras in the running pipeline instead: the other cameras lose
no frame, their trackers keep their identities, and the MQTT session is not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from edgeseg.config import Config
from edgeseg.config.cameras import CameraSpec


@dataclass(frozen=True)
class CameraChange:
    """Cameras to open and add, and the names of those to remove, in config order."""

    added: Tuple[CameraSpec, ...]
    removed: Tuple[str, ...]

    def describe(self) -> str:
        parts = []
        if self.added:
            parts.append("added " + ", ".join(c.name for c in self.added))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        return "cameras " + "; ".join(parts) if parts else "no camera change"


def _without_cameras(config: Config) -> Dict[str, Any]:
    doc = config.model_dump()
    doc.pop("cameras", None)
    return doc


def camera_change(old: Config, new: Config) -> Optional[CameraChange]:
    """The cameras added and removed when that is all that changed; None otherwise (the reload
    then rebuilds the pipeline as usual). An identical list gives None too: nothing to apply
    live, and the usual path handles the rest of the file."""
    if not (old.cameras and new.cameras) or _without_cameras(old) != _without_cameras(new):
        return None
    before = {spec.name: spec for spec in old.camera_specs()}
    after = {spec.name: spec for spec in new.camera_specs()}
    for name in before.keys() & after.keys():
        if before[name] != after[name]:
            return None  # a camera present in both changed: rebuild
    added: List[CameraSpec] = [spec for name, spec in after.items() if name not in before]
    removed = [name for name in before if name not in after]
    if not added and not removed:
        return None
    return CameraChange(tuple(added), tuple(removed))
