"""The ``engines`` section of the configuration: where bundles are installed and who may sign them.

Same rules as the rest of the schema: unknown keys refused, every field described and defaulted.
Paths must be absolute: the daemon (started by systemd from ``/``) and an engineer's shell must
mean the same directory by the same setting.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Final, List, Literal, Optional

from pydantic import Field, field_validator

from edgeseg.strict import StrictModel

DEFAULT_ENGINES_ROOT: Final = "/var/lib/edgeseg/engines"
DEFAULT_PID_FILE: Final = "/run/edgeseg/edgeseg.pid"
BuildPrecision = Literal["fp32", "fp16", "int8"]


def _default_build_precisions() -> List[BuildPrecision]:
    return ["fp16", "int8"]


class EnginesConfig(StrictModel):
    root: str = Field(
        DEFAULT_ENGINES_ROOT, min_length=1,
        description="engine store: bundles/, the 'active' and 'previous' links, staging directories",
    )
    public_key: Optional[str] = Field(
        None,
        description="ed25519 public key (PEM) that bundles must be signed with; when set, unsigned "
        "bundles and bad signatures are refused; null = signatures not required",
    )
    pid_file: str = Field(
        DEFAULT_PID_FILE, min_length=1,
        description="pid file of the running daemon, signalled (SIGHUP) to reload after a switch",
    )
    build_on_start: bool = Field(
        False,
        description="at start, when the bundle has no TensorRT plan for this device but TensorRT is installed: "
        "serve from its ONNX on ONNX Runtime at once, build the plans in the background "
        "('edgeseg engines build'), then reload onto them",
    )
    build_precisions: List[BuildPrecision] = Field(
        default_factory=_default_build_precisions, min_length=1,
        description="plans build_on_start makes, each where the bundle has its ONNX (int8: the Q/DQ ONNX)",
    )
    build_workspace_mib: int = Field(
        1024, ge=64, le=65536, description="TensorRT's tactic workspace for build_on_start, MiB",
    )

    @field_validator("root", "public_key", "pid_file")
    @classmethod
    def _absolute(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not PurePosixPath(value).is_absolute():
            raise ValueError("must be an absolute path")
        return value
