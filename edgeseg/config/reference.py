"""The configuration reference (``docs/configuration.md``), generated from the schema itself.

A reference written by hand drifts from the code the day a field is added; this one is rendered
from the pydantic models (``edgeseg.config.schema.Config`` and its sections), so the field list,
types, defaults, bounds and descriptions are the validator's own. A test compares the committed
file with this output, so adding a field without regenerating the page fails the suite:

    python -m edgeseg.config.reference > docs/configuration.md     # or: edgeseg config --reference

The walk reads ``model_fields`` (annotation, default, constraint metadata, description) rather
than ``model_json_schema()``: the JSON Schema's shape changes between pydantic releases, and the
page must come out byte for byte the same on Python 3.8 (JetPack 5's pydantic) and 3.11. Fields
are listed in the order the models declare them, which is the order of the sample files too.
"""

from __future__ import annotations

import json
import re
import sys
import typing
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Tuple, Type

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from edgeseg.config.errors import is_secret_name

_NONE_TYPE = type(None)
#: A ``<`` that markdown would read as the start of an HTML tag.
_HTML_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
#: Constraint names pydantic keeps in a field's metadata, with how the page words them.
_NUMBER_BOUNDS: Tuple[Tuple[str, str], ...] = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", SecretStr: "string (secret)"}

HEADER = """# Configuration reference

<!-- Generated from the schema by `python -m edgeseg.config.reference` (edgeseg/config/reference.py).
     Do not edit by hand: change the field in edgeseg/config/, then regenerate this file. -->

One YAML document (`--config FILE`, or `/etc/edgeseg/config.yaml` for `edgeseg serve`). Every key is
optional; a key not listed here is refused (a typo never silently means "use the default"), and so is a
value outside its bounds, with one line naming the field. Command-line flags are laid over the file
and checked the same way.

- `edgeseg config --check FILE` validates a file as the daemon would, without opening the model or
  the source (`--serve` adds what only `edgeseg serve` refuses).
- `edgeseg config --schema` prints the JSON Schema of this document (for editors and CI).
- `edgeseg config --reference` prints this page.

Defaults are those of the code; `null` means unset. Bounds are inclusive unless written `>` or `<`.
"""


@dataclass(frozen=True)
class FieldDoc:
    """One configuration key as the reference lists it."""

    path: str
    type: str
    default: str
    bounds: str
    description: str
    #: The section this key opens (``mqtt.tls``), or None for a value.
    section: Optional[Type[BaseModel]] = None


@dataclass(frozen=True)
class SectionDoc:
    """A table of the reference: a model's own keys, under the dotted path that leads to it."""

    path: str
    intro: str
    fields: List[FieldDoc]


def _section_model(annotation: Any) -> Optional[Type[BaseModel]]:
    """The model a field holds (itself, or inside ``Optional``), None for a value."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _literal_values(annotation: Any) -> Optional[Tuple[Any, ...]]:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return None


def _type_name(annotation: Any) -> str:
    """``annotation`` in words: string, integer or null, list of string, section."""
    literal = _literal_values(annotation)
    if literal is not None:
        return " or ".join(sorted({_SCALARS.get(type(v), type(v).__name__) for v in literal}))
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        parts = [_type_name(a) for a in typing.get_args(annotation) if a is not _NONE_TYPE]
        nullable = _NONE_TYPE in typing.get_args(annotation)
        return " or ".join(parts + (["null"] if nullable else []))
    if origin in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        key, value = typing.get_args(annotation) or (str, Any)
        return f"mapping of {_type_name(key)} to {_type_name(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if isinstance(annotation, type) and annotation in _SCALARS:
        return _SCALARS[annotation]
    return str(annotation)


def _value(value: Any) -> str:
    """A value as YAML/JSON writes it (``null``, ``true``, ``"rle"``, ``[]``)."""
    return json.dumps(value, sort_keys=True)


def _is_list(annotation: Any) -> bool:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) in (list, tuple, set, frozenset):
            return True
    return False


def _bounds(field: FieldInfo) -> str:
    """The field's constraints in words: ranges, multiples, lengths, patterns and allowed values."""
    words: List[str] = []
    for item in field.metadata:
        for name, sign in _NUMBER_BOUNDS:
            if getattr(item, name, None) is not None:
                words.append(f"{sign} {_value(getattr(item, name))}")
        if getattr(item, "multiple_of", None) is not None:
            words.append(f"multiple of {_value(item.multiple_of)}")
        unit = "items" if _is_list(field.annotation) else "length"
        if getattr(item, "min_length", None) is not None:
            words.append(f"{unit} >= {item.min_length}")
        if getattr(item, "max_length", None) is not None:
            words.append(f"{unit} <= {item.max_length}")
        if getattr(item, "pattern", None) is not None:
            words.append(f"pattern `{item.pattern}`")
    for candidate in (field.annotation, *typing.get_args(field.annotation)):
        literal = _literal_values(candidate)
        if literal is not None:
            prefix = "each one of" if candidate is not field.annotation and _is_list(field.annotation) else "one of"
            words.append(prefix + " " + ", ".join(f"`{_value(v)}`" for v in literal))
    return ", ".join(words)


def _default(name: str, field: FieldInfo) -> str:
    """The default as written in a file; a section says so; a default computed at start (the host
    name) is not evaluated here, so the page is the same on every machine."""
    if field.default_factory is not None:
        factory: Any = field.default_factory
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            return "(section)"
        value = factory()
        if isinstance(value, (list, tuple, dict)):
            return f"`{_value(list(value) if isinstance(value, tuple) else value)}`"
        return "(computed at start, see description)"
    if field.is_required():
        return "(required)"
    if field.default is not None and (is_secret_name(name) or isinstance(field.default, SecretStr)):
        return "(set, not shown)"
    return f"`{_value(field.default)}`"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell: on one line, pipes escaped, and outside code spans
    a ``<`` that would open an HTML tag (``<device_id>``, which a renderer would swallow) escaped."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(_HTML_OPEN.sub(r"\\<", part) if n % 2 == 0 else part for n, part in enumerate(parts))


def _section_intro(model: Type[BaseModel], description: str) -> str:
    doc = " ".join((model.__doc__ or "").split()) if model.__doc__ is not BaseModel.__doc__ else ""
    parts = [p.rstrip(".") for p in (description, doc) if p]
    return ". ".join(parts) + ("." if parts else "")


def walk(model: Type[BaseModel], prefix: str = "", intro: str = "") -> Iterator[SectionDoc]:
    """The sections of ``model``, itself first, then each nested section depth first."""
    fields: List[FieldDoc] = []
    nested: List[Tuple[str, Type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        section = _section_model(field.annotation)
        description = field.description or ""
        fields.append(FieldDoc(path, _type_name(field.annotation), _default(name, field), _bounds(field),
                               description, section))
        if section is not None:
            nested.append((path, section, description))
    yield SectionDoc(prefix.rstrip(".") or "(top level)", intro or _section_intro(model, ""), fields)
    for path, section, description in nested:
        yield from walk(section, f"{path}.", _section_intro(section, description))


def leaf_fields(model: Type[BaseModel]) -> List[FieldDoc]:
    """Every key of the document (values and sections alike), in schema order."""
    return [f for section in walk(model) for f in section.fields]


def _anchor(path: str) -> str:
    """GitHub's heading anchor for ``## `a.b` ``: lower case, dots and backticks dropped."""
    return path.replace(".", "").lower()


def render_reference(model: Optional[Type[BaseModel]] = None) -> str:
    """The whole markdown page for ``model`` (default: the edgeseg configuration)."""
    if model is None:
        from edgeseg.config.schema import Config

        model = Config
    lines = HEADER.splitlines()
    for section in walk(model):
        top = section.path == "(top level)"
        level = "##" if top or "." not in section.path else "###"
        lines += ["", f"{level} {'Top level' if top else '`' + section.path + '`'}", ""]
        if section.intro:
            lines += [section.intro, ""]
        lines += ["| Key | Type | Default | Bounds | Description |", "| --- | --- | --- | --- | --- |"]
        for f in section.fields:
            kind = f"{f.type}, [below](#{_anchor(f.path)})" if f.section is not None else f.type
            lines.append(f"| `{f.path}` | {_cell(kind)} | {_cell(f.default)} | {_cell(f.bounds)} | "
                         f"{_cell(f.description)} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m edgeseg.config.reference``: print the page (redirect it to docs/configuration.md)."""
    del argv
    sys.stdout.write(render_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
