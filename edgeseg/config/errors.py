"""One-line descriptions of pydantic validation errors, shared by every validated document.

The configuration, its sections validated alone (mqtt, dashboard) and bundle manifests all turn
a ``ValidationError`` into ``field 'a.b': what was expected (got ...)``. One function keeps the
wording the same everywhere and, more importantly, the rule that secrets never reach a message:
the input of a secret field is never shown at any depth, any string shown has its credentials
masked, and what is shown of an input is bounded (``ECHO_MAX_CHARS``), whatever its size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, List, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from edgeseg.errors import ConfigError
from edgeseg.sources.uri import mask_credentials

Section = TypeVar("Section", bound=BaseModel)

#: Fields whose values are never echoed back, wherever they sit in a document.
SECRET_FIELDS = frozenset({"password", "password_file", "token", "token_file"})
#: Any key named like a secret is treated as one too (``api_key``, ``rtsp_password``, ``auth``...).
_SECRET_NAME = re.compile(
    r"pass|pwd|token|secret|auth|credential|api_?key|(?:^|_)(?:key|sig|signature)(?:_|$)", re.IGNORECASE
)
#: Most errors listed in one line; a list of a million bad items must not make a million-part line.
MAX_ERRORS_SHOWN: Final = 10
#: Most characters of an input shown after ``got``; the rest is cut with ``...``.
ECHO_MAX_CHARS: Final = 80
#: Most characters of a pydantic message or a field path kept in a one-line error.
MESSAGE_MAX_CHARS: Final = 200
#: A string longer than this is not shown at all, only its length (masking reads it whole).
ECHO_MAX_STRING: Final = 4096
#: How deep nested lists and mappings are shown before ``...``.
ECHO_MAX_DEPTH: Final = 4
_REDACTED: Final = "***"
#: Errors that say "expected a section (a mapping)": their input is a whole section.
_SECTION_TYPES: Final = frozenset({"model_type", "dict_type", "model_attributes_type"})
_ELLIPSIS: Final = "..."


#: The error type of ``rule_error``: a rule that spans fields, raised where the model is whole.
RULE_ERROR_TYPE: Final = "edgeseg_rule"


def rule_error(field: str, message: str) -> PydanticCustomError:
    """An error to raise from a validator for a rule that spans fields (``cameras`` with
    ``source.uri``), reported as ``field 'LOC.field': message``: ``field`` is the dotted path
    below the validated model (pydantic gives a model validator's error no path of its own).
    The message names what it needs (``cameras[0] and cameras[2]``), so the input is not echoed."""
    return PydanticCustomError(RULE_ERROR_TYPE, "{message}", {"field": field, "message": message})


#: What pydantic puts before the message of a ValueError raised in a validator.
_VALUE_ERROR_PREFIX = "Value error, "


def is_secret_name(name: object) -> bool:
    """Whether a key names a secret, so that its value is never shown."""
    return str(name) in SECRET_FIELDS or _SECRET_NAME.search(str(name)) is not None


def bounded(text: str, limit: int = ECHO_MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters, ending with ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - len(_ELLIPSIS)] + _ELLIPSIS


class _Full(Exception):
    """The echo reached its length limit; what was rendered so far is shown, then ``...``."""


class _Echo:
    """A bounded, masked ``repr`` of any input: strings have credentials masked, values of keys
    named like secrets are ``***`` at any depth, and rendering stops at ``limit`` characters, so
    an input of any size (an alias bomb, a huge list) costs only ``limit`` characters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: List[str] = []
        self.length = 0

    def emit(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)
        if self.length > self.limit:
            raise _Full

    def value(self, value: object, depth: int) -> None:
        if isinstance(value, str):
            if len(value) > ECHO_MAX_STRING:
                self.emit(f"<text of {len(value)} characters>")
            else:
                self.emit(repr(mask_credentials(value)))
        elif isinstance(value, Mapping):
            self.mapping(value, depth)
        elif isinstance(value, (list, tuple, set, frozenset)):
            self.sequence(value, depth)
        elif value is None or isinstance(value, (bool, int, float)):
            self.emit(repr(value))
        else:  # anything else renders through its own repr, masked like a string
            self.value(str(value), depth)

    def mapping(self, value: Mapping[Any, Any], depth: int) -> None:
        if depth >= ECHO_MAX_DEPTH:
            self.emit("{...}")
            return
        self.emit("{")
        for n, (key, item) in enumerate(value.items()):
            if n:
                self.emit(", ")
            self.value(key, depth + 1)
            self.emit(": ")
            if is_secret_name(key):
                self.emit(_REDACTED)
            else:
                self.value(item, depth + 1)
        self.emit("}")

    def sequence(self, value: Iterable[Any], depth: int) -> None:
        if depth >= ECHO_MAX_DEPTH:
            self.emit("[...]")
            return
        self.emit("[")
        for n, item in enumerate(value):
            if n:
                self.emit(", ")
            self.value(item, depth + 1)
        self.emit("]")


def safe_echo(value: object, limit: int = ECHO_MAX_CHARS) -> str:
    """What an error may show of an input: masked, secrets redacted, at most ``limit`` characters."""
    echo = _Echo(limit)
    try:
        echo.value(value, 0)
    except _Full:
        pass
    except RecursionError:  # a self-referencing input
        echo.parts.append(_ELLIPSIS)
    return bounded("".join(echo.parts), limit)


def safe_text(text: object, limit: int = MESSAGE_MAX_CHARS) -> str:
    """A message or key that may quote input: masked, then bounded (masking first, so that
    cutting never leaves half a ``user:password@`` the masking no longer recognises)."""
    raw = str(text)
    if len(raw) > ECHO_MAX_STRING:
        raw = raw[:ECHO_MAX_STRING]
    return bounded(mask_credentials(raw), limit)


def pydantic_message(msg: object) -> str:
    """A pydantic error message without its ``Value error, `` prefix (``str.removeprefix`` is 3.9+)."""
    text = str(msg)
    return text[len(_VALUE_ERROR_PREFIX):] if text.startswith(_VALUE_ERROR_PREFIX) else text


def describe_error(error: Mapping[str, Any], prefix: str = "") -> str:
    """``field 'prefix.loc': message (got value)`` for one pydantic error dict.

    Every part that may quote the input (the path, which holds unknown keys as typed, the
    message, the input) is masked and bounded; the input of a field named like a secret, or
    inside one, is never shown.
    """
    loc = ".".join(safe_text(p, ECHO_MAX_CHARS) for p in error["loc"])
    if error["type"] == RULE_ERROR_TYPE:
        field = safe_text((error.get("ctx") or {}).get("field", ""), ECHO_MAX_CHARS)
        name = ".".join(p for p in (prefix, loc, field) if p)
        where = f"field '{name}'" if name else "(top level)"
        return f"{where}: {safe_text(pydantic_message(error['msg']))}"
    name = ".".join(p for p in (prefix, loc) if p)
    where = f"field '{name}'" if name else "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if error["type"] == "missing":
        return f"{where}: required"
    msg = safe_text(pydantic_message(error["msg"]))
    if not loc or any(is_secret_name(p) for p in error["loc"]) or "input" not in error:
        return f"{where}: {msg}"
    got = error["input"]
    if error["type"] in _SECTION_TYPES and isinstance(got, (list, tuple, Mapping)):
        # a section given in another shape (mqtt: as a list) is not echoed: its items may be
        # secrets that no key names any more (['token', 'hunter2'])
        return f"{where}: {msg} (got a {type(got).__name__} of {len(got)} items)"
    return f"{where}: {msg} (got {safe_echo(got)})"


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Every error of ``exc`` on one line, separated by '; ' (the first MAX_ERRORS_SHOWN)."""
    errors = exc.errors()
    line = "; ".join(describe_error(e, prefix) for e in errors[:MAX_ERRORS_SHOWN])
    more = len(errors) - MAX_ERRORS_SHOWN
    return f"{line}; and {more} more" if more > 0 else line


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
