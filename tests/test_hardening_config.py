"""Issue 11, configuration side: secrets never echoed, echoes bounded, YAML read strictly.

Each class of fault is a table: a new variant of a class is one more row. The rows hold inputs
that the previous code got wrong (a password with ``/`` or ``@``, a credential in a list, a
duplicate section, an alias bomb), so every assertion here could fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from edgeseg.config import load_config, parse_config
from edgeseg.config.errors import ECHO_MAX_CHARS, safe_echo
from edgeseg.config.yaml_loader import MAX_ALIASES, load_yaml
from edgeseg.errors import ConfigError
from edgeseg.service.daemon import check_serve_sinks
from edgeseg.sinks.coco import SERVE_REFUSAL
from edgeseg.sources.uri import mask_credentials

SECRET = "hunter2"
#: Longest one-line error a single bad field may produce (path, message and bounded echo).
ONE_ERROR_MAX = 400

# --------------------------------------------------------------------- (Medium 3) URI masking


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://admin:hunter2@cam/1", "rtsp://admin:***@cam/1"),
        ("rtsp://admin:hun/ter2@cam/1", "rtsp://admin:***@cam/1"),  # '/' in the password
        ("rtsp://admin:hun ter2@cam:554/1", "rtsp://admin:***@cam:554/1"),  # a space
        ("rtsp://admin:hun#ter2@cam/1", "rtsp://admin:***@cam/1"),  # '#'
        ("rtsp://admin:hun@ter2@cam/1", "rtsp://admin:***@cam/1"),  # a raw '@'
        ("rtsp://admin:hun%40ter2@[fe80::1]:554/x", "rtsp://admin:***@[fe80::1]:554/x"),  # %-escape, IPv6
        ("http://admin:@10.0.0.2/mjpg", "http://admin:***@10.0.0.2/mjpg"),  # empty password
        ("rtsp://cam/s?user=a&password=hunter2&x=1", "rtsp://cam/s?user=a&password=***&x=1"),
        ("rtsp://cam/s?PWD=hunter2", "rtsp://cam/s?PWD=***"),
        ("http://h/x?Token=hunter2#frag", "http://h/x?Token=***#frag"),
        ("http://h/x?api_key=hunter2&sig=hunter2", "http://h/x?api_key=***&sig=***"),
        ("http://h/x?auth=hunter2;secret=hunter2", "http://h/x?auth=***;secret=***"),
        ("broker user:hunter2@host:1883 down", "broker user:***@host:1883 down"),  # no scheme
        ("reconnecting rtsp://u:hun ter2@h/x in 2 s", "reconnecting rtsp://u:***@h/x in 2 s"),
        ("['rtsp://a:hunter2@h/1', 'rtsp://b:hunter2@h2/2']", "['rtsp://a:***@h/1', 'rtsp://b:***@h2/2']"),
        # left alone: no password to hide
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream"),
        ("rtsp://user@cam.local/stream", "rtsp://user@cam.local/stream"),
        ("/data/a:b@c.jpg", "/data/a:b@c.jpg"),
        ("rtsp://cam/s?user=a&x=1", "rtsp://cam/s?user=a&x=1"),
    ],
)
def test_mask_credentials_hides_every_password_shape(text: str, expected: str) -> None:
    """The log lines of start and reconnect print URIs through this one function."""
    assert mask_credentials(text) == expected


# ------------------------------------------------------ (Medium 3) secrets in one-line errors


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"source": {"uri": {"rtsp": "rtsp://admin:hunter2@cam/1"}}}, "source.uri"),
        ({"source": {"uri": ["rtsp://admin:hun/ter2@cam/1"]}}, "source.uri"),
        ({"source": ["rtsp://admin:hunter2@cam/1"]}, "source"),
        ({"mqtt": ["mqtt://u:hunter2@broker"]}, "mqtt"),
        ({"mqtt": [{"password": "hunter2"}]}, "mqtt"),
        ({"dashboard": ["token", "hunter2"]}, "dashboard"),
        ({"dashboard": [{"token": "hunter2"}]}, "dashboard"),
        ({"model": {"path": ["user:hunter2@host"]}}, "model.path"),
        ({"output": {"sinks": "mqtt://u:hunter2@broker"}}, "output.sinks"),
        ({"output": {"sinks": [{"uri": "mqtt://u:hunter2@b", "x": [{"api_key": "hunter2"}]}]}}, "output.sinks"),
        ({"log_level": {"deep": [[{"password": "hunter2"}]]}}, "log_level"),
        ({"source": {"rtsp://admin:hunter2@cam/1": 1}}, "source"),  # a secret as an unknown key
        ({"source": {"uri": "rtsp://admin:hunter2@cam/1", "loop": "maybe"}}, "source.loop"),
    ],
)
def test_errors_never_echo_secrets_in_any_shape(doc: Dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    text = str(info.value)
    assert f"field '{field}" in text
    assert SECRET not in text and "hun/ter2" not in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("value", "absent", "present"),
    [
        ({"a": {"b": [{"password": "hunter2"}]}}, "hunter2", "***"),
        ([["rtsp://x:hunter2@h/1"]], "hunter2", "x:***@h"),
        ({"rtsp_password": "hunter2", "user": "me"}, "hunter2", "me"),
        ({"token_file": "/etc/hunter2"}, "hunter2", "***"),
    ],
)
def test_safe_echo_masks_at_any_depth(value: object, absent: str, present: str) -> None:
    shown = safe_echo(value)
    assert absent not in shown and present in shown


# ---------------------------------------------------------- (Low 13) every echo is bounded


@pytest.mark.parametrize(
    "doc",
    [
        {"log_level": "x" * 5_000_000},
        {"source": {"uri": ["y" * 1000] * 10_000}},
        {"model": {"imgsz": list(range(1_000_000))}},
        {"output": {"sinks": [[1] * 100] * 100_000}},
        {"model": {"threads": "rtsp://u:hunter2@h/" + "z" * 500}},
    ],
)
def test_error_echo_is_bounded(doc: Dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    text = str(info.value)
    assert len(text) < 12 * ONE_ERROR_MAX  # at most MAX_ERRORS_SHOWN errors of bounded size
    assert SECRET not in text


def test_safe_echo_length() -> None:
    assert len(safe_echo(list(range(10**6)))) <= ECHO_MAX_CHARS


# ------------------------------------------------------- (Low 12) duplicate keys and sections


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("source:\n  uri: a.mp4\nsource:\n  uri: b.mp4\n", "lines 1 and 3"),
        ("source:\n  uri: a.mp4\n  loop: true\n  uri: b.mp4\n", "lines 2 and 4"),
        ("mqtt: {uri: 'mqtt://b', uri: 'mqtt://c'}\n", "lines 1 and 1"),
        ("output:\n  sinks: []\n\n\n  sinks: [jsonl:a]\n", "lines 2 and 5"),
        ("a: &x {k: 1}\nb:\n  <<: *x\n  j: 2\n  j: 3\n", "lines 4 and 5"),
    ],
)
def test_duplicate_keys_are_refused_with_both_lines(text: str, lines: str) -> None:
    with pytest.raises(ConfigError, match=lines) as info:
        load_yaml(text, "config file c.yaml")
    assert "duplicate key" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &x {k: 1, j: 1}\nb:\n  <<: *x\n  k: 2\n", {"a": {"k": 1, "j": 1}, "b": {"k": 2, "j": 1}}),
        ("source: {uri: a.mp4}\nmodel: {path: m.onnx}\n", {"source": {"uri": "a.mp4"}, "model": {"path": "m.onnx"}}),
    ],
)
def test_merge_keys_and_distinct_keys_still_load(text: str, expected: Dict[str, Any]) -> None:
    """A merge ('<<') may be overridden: that is what it is for, not a duplicate."""
    assert load_yaml(text, "c.yaml") == expected


def test_load_config_refuses_a_duplicate_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("source:\n  uri: a.mp4\nlog_level: info\nsource:\n  uri: b.mp4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.yaml.*duplicate key 'source' at lines 1 and 4"):
        load_config(path)


# ----------------------------------------------------------------- (Low 13) alias expansion

BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (BOMB, "aliases"),  # about 400 bytes, 387 million strings expanded
        ("a: &a [1, 2]\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n", f"more than {MAX_ALIASES} aliases"),
        ("a: &a [*a]\n", "recursive alias"),
        ("a: &a {b: *a}\n", "recursive alias"),
    ],
)
def test_alias_bombs_are_refused_in_one_short_line(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=reason) as info:
        load_config(path)
    assert len(str(info.value)) < ONE_ERROR_MAX and "\n" not in str(info.value)


def test_a_few_aliases_still_load() -> None:
    assert load_yaml("a: &a [1]\nb: *a\nc: *a\n", "c.yaml") == {"a": [1], "b": [1], "c": [1]}


# ------------------------------------------------------- (Medium 8) coco refused under serve


@pytest.mark.parametrize(
    ("sinks", "refused"),
    [
        (["coco:out/results.json"], "coco:out/results.json"),
        (["jsonl:out/r.jsonl", "coco:r.json"], "coco:r.json"),
        (["jsonl:out/r.jsonl", "video:out/v.mp4"], None),
        ([], None),
    ],
)
def test_serve_refuses_coco_sinks(sinks: list, refused: Optional[str]) -> None:
    config = parse_config({"output": {"sinks": sinks}})
    if refused is None:
        check_serve_sinks(config)
        return
    with pytest.raises(Exception, match="refused under serve") as info:
        check_serve_sinks(config)
    assert refused in str(info.value) and SERVE_REFUSAL in str(info.value)
    assert "\n" not in str(info.value)
