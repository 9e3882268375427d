"""The one YAML reader of the runtime: PyYAML's safe loader, stricter where it is silent.

``yaml.safe_load`` accepts a key given twice in one mapping (the last wins), which breaks the
schema's promise that a typo never silently falls back: a second ``source:`` section pasted at
the end of a file would quietly replace the first. It also expands aliases without bound, so a
300-byte "billion laughs" document becomes millions of values once validation or an error
message walks it. ``load_yaml`` refuses both, with a one-line ``ConfigError`` naming the lines.
"""

from __future__ import annotations

from typing import Any, Dict, Final, Hashable, Set

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from edgeseg.errors import ConfigError

MAX_ALIASES: Final = 100
"""Alias uses (``*name``) allowed in one document; a configuration needs a handful."""
MAX_EXPANDED_NODES: Final = 100_000
"""Values in the document once every alias is expanded; a full configuration has a few hundred."""
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class YamlRefused(yaml.YAMLError):
    """A document PyYAML would read but edgeseg refuses; its text is the whole one-line reason."""


class StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses duplicate mapping keys and bounds alias expansion."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise YamlRefused(f"more than {MAX_ALIASES} aliases (line {line}); expand them by hand")
        return super().compose_node(parent, index)

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> Dict[Hashable, Any]:
        first_line: Dict[Hashable, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # keys merged in with '<<' may be overridden, that is what '<<' is for
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first_line.get(key)
            except TypeError:
                continue  # an unhashable key: the base loader says so
            line = key_node.start_mark.line + 1
            if seen is not None:
                raise YamlRefused(f"duplicate key {_short(key)} at lines {seen} and {line}; keep one")
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _short(key: object, limit: int = 40) -> str:
    text = repr(key)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_expansion(root: Node) -> None:
    """Refuse a node graph whose aliases expand to more than MAX_EXPANDED_NODES values, or loop."""
    sizes: Dict[int, int] = {}
    visiting: Set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise YamlRefused(f"a recursive alias (line {node.start_mark.line + 1})")
        visiting.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child)
                if total > MAX_EXPANDED_NODES:
                    break
        elif isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                total += size(key_node) + size(value_node)
                if total > MAX_EXPANDED_NODES:
                    break
        visiting.discard(key)
        if total > MAX_EXPANDED_NODES:
            raise YamlRefused(f"aliases expand to more than {MAX_EXPANDED_NODES} values; expand them by hand")
        sizes[key] = total
        return total

    size(root)


def load_yaml(text: str, origin: str) -> Any:
    """The one document of ``text``, or a one-line ``ConfigError`` prefixed with ``origin``."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except YamlRefused as exc:
        raise ConfigError(f"{origin}: not accepted as YAML: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{origin}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{origin}: not accepted as YAML: nested too deeply") from None
