"""The ``model.openvino`` section: which OpenVINO device runs the model, at what precision, and
where OpenVINO keeps its compiled models.

Read only when ``model.backend`` is ``openvino``; the section validates (and is documented)
either way, so that switching the backend is a one-word change of a file that already checks.

    model:
      backend: openvino
      openvino:
        device: CPU          # GPU, GPU.1, NPU, AUTO, AUTO:GPU,CPU ...
        precision: auto      # OpenVINO's default for the device: bf16 on a CPU that has it
        cache_dir: null      # null: ~/.cache/edgeseg/openvino; "": no cache

The compiled-model cache is what makes a restart cheap: compiling for an Intel GPU takes
seconds to a minute, and OpenVINO loads the compiled blob from the cache instead of compiling
again when model, device and settings are unchanged (it keys the blob on all three).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final, Literal, Optional

from pydantic import Field, field_validator

from edgeseg.strict import StrictModel

#: A device name as OpenVINO spells it: a plugin (CPU, GPU, NPU) with an optional index
#: (GPU.1), or a virtual device (AUTO, MULTI, HETERO) with an optional priority list.
DEVICE_PATTERN: Final = r"^[A-Z]+(\.[0-9]+)?(:[A-Z]+(\.[0-9]+)?(,[A-Z]+(\.[0-9]+)?)*)?$"

OpenVinoPrecision = Literal["auto", "f32", "bf16", "f16"]

#: Under ``$XDG_CACHE_HOME`` (or ``~/.cache``): the default compiled-model cache.
CACHE_SUBDIR: Final = Path("edgeseg") / "openvino"


class OpenVinoConfig(StrictModel):
    device: str = Field(
        "CPU",
        description="OpenVINO device: CPU, GPU (GPU.0, GPU.1 ...), NPU, or AUTO (AUTO:GPU,CPU ...), in any "
        "case; a device that is not present is refused with the ones that are",
    )
    precision: OpenVinoPrecision = Field(
        "auto",
        description="inference precision: auto = OpenVINO's default for the device (bf16 on a CPU with "
        "bf16, f16 on a GPU), f32, bf16 or f16; one the device does not list is refused",
    )
    cache_dir: Optional[str] = Field(
        None,
        description="compiled-model cache, so a restart does not compile again; null = "
        "$XDG_CACHE_HOME/edgeseg/openvino (default ~/.cache/edgeseg/openvino), \"\" = no cache",
    )

    @field_validator("device", mode="before")
    @classmethod
    def _device_name(cls, value: object) -> object:
        """Upper-cased (OpenVINO's spelling; ``model.device`` of ONNX Runtime is lower case), then
        checked to be a device name, so a typo is refused when the file is read."""
        if not isinstance(value, str):
            return value
        name = value.strip().upper()
        if not re.match(DEVICE_PATTERN, name):
            raise ValueError("expected an OpenVINO device name such as CPU, GPU, GPU.1, NPU or AUTO:GPU,CPU")
        return name

    def resolved_cache_dir(self) -> Optional[str]:
        """The cache directory to use, or None for no cache (``cache_dir: ""``)."""
        if self.cache_dir is None:
            default = default_cache_dir()
            return str(default) if default is not None else None
        return self.cache_dir or None


def default_cache_dir() -> Optional[Path]:
    """``$XDG_CACHE_HOME/edgeseg/openvino``, or ``~/.cache/edgeseg/openvino`` (the XDG default);
    None where neither is known (no HOME and no passwd entry: a bare service account)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):
            return None
    return Path(base) / CACHE_SUBDIR
