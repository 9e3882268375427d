"""One-line descriptions of pydantic validation errors, shared by every validated document.

The configuration, its sections validated alone (mqtt, dashboard) and bundle manifests all turn
a ``ValidationError`` into ``field 'a.b': what was expected (got ...)``. One function keeps the
wording the same everywhere and, more importantly, the rule that secrets never reach a message:
the input of a secret field is never shown, and any URI shown has its password masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edgeseg.errors import ConfigError
from edgeseg.sources.uri import mask_credentials

Section = TypeVar("Section", bound=BaseModel)

#: Fields whose values are never echoed back, wherever they sit in a document.
SECRET_FIELDS = frozenset({"password", "password_file", "token", "token_file"})


#: What pydantic puts before the message of a ValueError raised in a validator.
_VALUE_ERROR_PREFIX = "Value error, "


def pydantic_message(msg: object) -> str:
    """A pydantic error message without its ``Value error, `` prefix (``str.removeprefix`` is 3.9+)."""
    text = str(msg)
    return text[len(_VALUE_ERROR_PREFIX):] if text.startswith(_VALUE_ERROR_PREFIX) else text


def describe_error(error: Mapping[str, Any], prefix: str = "") -> str:
    """``field 'prefix.loc': message (got value)`` for one pydantic error dict."""
    loc = ".".join(str(p) for p in error["loc"])
    name = ".".join(p for p in (prefix, loc) if p)
    where = f"field '{name}'" if name else "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if error["type"] == "missing":
        return f"{where}: required"
    msg = pydantic_message(error["msg"])
    last = str(error["loc"][-1]) if error["loc"] else ""
    if not loc or last in SECRET_FIELDS or "input" not in error:
        return f"{where}: {msg}"
    got = error["input"]
    if isinstance(got, str):
        got = mask_credentials(got)  # a broker or camera URI may carry a password
    if isinstance(got, Mapping) and SECRET_FIELDS & {str(k) for k in got}:
        return f"{where}: {msg}"  # a whole section that holds a secret is not echoed either
    return f"{where}: {msg} (got {got!r})"


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Every error of ``exc`` on one line, separated by '; '."""
    return "; ".join(describe_error(e, prefix) for e in exc.errors())


def parse_section(model: type[Section], raw: Any, origin: str) -> Section:
    """Validate one configuration section on its own (absent: all defaults), or raise a one-line
    ``ConfigError`` prefixed with ``origin``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: expected a mapping, found {type(raw).__name__}")
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, origin)) from None
