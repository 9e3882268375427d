"""The ``dashboard`` section of the configuration: where the web dashboard listens, who may use it.

Same rules as the rest of the schema (``edgeseg/config/schema.py``): unknown keys are refused,
every field is described, bounded and defaulted, and the model is frozen. The dashboard listens
on the loopback interface unless told otherwise; on any other address a token is required, and
the config is refused without one (the server refuses to start too, should it be built by hand).

    dashboard:
      enabled: true
      host: 0.0.0.0                        # reachable from the LAN: a token is then required
      port: 8080
      token_file: /etc/edgeseg/dashboard.token
      stream_fps: 10
      jpeg_quality: 75

Clients present the token as ``Authorization: Bearer <token>``, or as ``?token=<token>`` on GET
requests (a browser cannot set headers on ``<img>`` or ``EventSource``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Final, Optional

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from edgeseg.config.errors import parse_section
from edgeseg.errors import ConfigError
from edgeseg.strict import StrictModel

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
TOKEN_MIN_LENGTH: Final = 16
"""A token shorter than this is refused: 16 random characters are out of reach of guessing."""
TOKEN_MAX_LENGTH: Final = 512
"""A token longer than this is refused (and so is a longer ``?token=``, unread)."""
STREAM_FPS_MIN: Final = 0.2
"""Slowest stream pace, in the config and in ``?fps=``: one frame every 5 s at least."""
STREAM_FPS_MAX: Final = 60.0
LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine (127.0.0.0/8, ::1, localhost).

    Wildcards (``0.0.0.0``, ``::``) and any other name count as reachable from elsewhere: a host
    name is not resolved, so one that happens to resolve to 127.0.1.1 still needs a token.
    """
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class DashboardConfig(StrictModel):
    enabled: bool = Field(False, description="serve the web dashboard from the daemon")
    host: str = Field(
        DEFAULT_HOST, min_length=1, max_length=255,
        description="address to listen on; anything but loopback (127.0.0.1, ::1, localhost) needs a token",
    )
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="TCP port; 0 = any free port (tests)")
    token: Optional[SecretStr] = Field(
        None, description=f"access token, at least {TOKEN_MIN_LENGTH} characters (prefer token_file)"
    )
    token_file: Optional[str] = Field(
        None, min_length=1, description="file whose first line is the access token (keep it mode 0600)"
    )
    stream_fps: float = Field(
        10.0, ge=STREAM_FPS_MIN, le=STREAM_FPS_MAX, description="most frames per second sent to each viewer"
    )
    stream_max_width: int = Field(
        960, ge=0, le=8192, description="frames wider than this are scaled down before encoding; 0 = full size"
    )
    jpeg_quality: int = Field(75, ge=10, le=100, description="JPEG quality of the live stream")
    events_hz: float = Field(1.0, ge=0.2, le=5.0, description="statistics updates per second to each viewer")
    max_viewers: int = Field(
        4, ge=1, le=64, description="concurrent live streams (and, separately, event streams) at most"
    )

    # Cross-field checks are field validators on the later field, never a model validator: the
    # error of a model validator carries the whole section as its input, token included.

    @field_validator("token")
    @classmethod
    def _token_length(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        if value is not None and len(value.get_secret_value().strip()) < TOKEN_MIN_LENGTH:
            raise ValueError(f"must be at least {TOKEN_MIN_LENGTH} characters")
        if value is not None and len(value.get_secret_value().strip()) > TOKEN_MAX_LENGTH:
            raise ValueError(f"must be at most {TOKEN_MAX_LENGTH} characters")
        return value

    @field_validator("token_file")
    @classmethod
    def _one_token(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        token = info.data.get("token")
        if token is not None and value is not None:
            raise ValueError("set token or token_file, not both")
        host = info.data.get("host")
        if token is None and value is None and isinstance(host, str) and not is_loopback(host):
            raise ValueError(f"host {host!r} is reachable from other machines: set token or token_file")
        return value

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def resolve_token(self) -> str | None:
        """The token (read from ``token_file`` when that is set), or None when none is configured.

        Raises ``ConfigError`` when the file cannot be read or its token is too short.
        """
        if self.token is not None:
            return self.token.get_secret_value().strip()
        if self.token_file is None:
            return None
        path = Path(self.token_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"dashboard.token_file {path}: cannot read ({exc})") from None
        token = lines[0].strip() if lines else ""
        if not TOKEN_MIN_LENGTH <= len(token) <= TOKEN_MAX_LENGTH:
            raise ConfigError(
                f"dashboard.token_file {path}: the first line must hold a token of at least "
                f"{TOKEN_MIN_LENGTH} and at most {TOKEN_MAX_LENGTH} characters"
            )
        return token


def parse_dashboard_config(raw: Any, origin: str = "dashboard") -> DashboardConfig:
    """Validate the ``dashboard`` section alone, or raise a one-line ``ConfigError``."""
    return parse_section(DashboardConfig, raw, origin)
