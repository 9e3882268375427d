"""Configuration: every field validated, unknown keys refused, one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.config import load_config, parse_config
from edgeseg.errors import ConfigError


def test_defaults_are_valid() -> None:
    config = parse_config({})
    assert config.version == 1
    assert config.postprocess.nms == "gaussian"
    assert config.postprocess.settings().conf_threshold == config.postprocess.conf_threshold


@pytest.mark.parametrize(
    "doc, field, expected",
    [
        ({"postprocess": {"conf_threshold": 1.5}}, "postprocess.conf_threshold", "less than 1"),
        ({"postprocess": {"conf_threshold": "high"}}, "postprocess.conf_threshold", "valid number"),
        ({"postprocess": {"nms": "fast"}}, "postprocess.nms", "'gaussian', 'linear' or 'hard'"),
        ({"postprocess": {"max_detections": 0}}, "postprocess.max_detections", "greater than or equal to 1"),
        ({"postprocess": {"refine": {"open_px": -1}}}, "postprocess.refine.open_px", "greater than or equal"),
        ({"model": {"imgsz": 333}}, "model.imgsz", "multiple of 32"),
        ({"model": {"imgsz": 2048}}, "model.imgsz", "less than or equal to 1280"),
        ({"model": {"device": "tpu"}}, "model.device", "'auto', 'cpu' or 'cuda'"),
        ({"source": {"reconnect_initial_s": 0}}, "source.reconnect_initial_s", "greater than 0"),
        ({"source": {"reconnect_initial_s": 10, "reconnect_max_s": 1}}, "source", "reconnect_max_s"),
        ({"output": {"mask_format": "png"}}, "output.mask_format", "'rle', 'polygon' or 'none'"),
        ({"output": {"sinks": "jsonl:x"}}, "output.sinks", "valid list"),
        ({"version": 2}, "version", "1"),
        ({"postprocess": {"conf": 0.5}}, "postprocess.conf", "unknown key"),
        ({"modle": {}}, "modle", "unknown key"),
    ],
)
def test_invalid_values_name_the_field(doc: dict, field: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, origin="cfg.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cfg.yaml: ")
    assert f"field '{field}'" in message
    assert expected in message


def test_overrides_win_and_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("postprocess:\n  conf_threshold: 0.4\n  nms: linear\nmodel:\n  path: m.onnx\n")
    config = load_config(path, {"postprocess": {"conf_threshold": 0.6}})
    assert config.postprocess.conf_threshold == 0.6
    assert config.postprocess.nms == "linear"
    assert config.model.path == "m.onnx"
    with pytest.raises(ConfigError, match="postprocess.conf_threshold"):
        load_config(path, {"postprocess": {"conf_threshold": 7}})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("postprocess: [1, 2", "not valid YAML at line"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found: /nonexistent/x.yaml"):
        load_config("/nonexistent/x.yaml")


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "example.yaml")
    assert config.model.path and config.source.uri
    # it runs on what the repository ships (the demo bundle; `make demo` writes the video), never
    # on material outside the checkout
    assert (root / config.model.path / "manifest.json").is_file()
    for path in (config.model.path, config.source.uri, *config.output.sinks):
        assert ".." not in Path(path.partition(":")[2] if ":" in path else path).parts, path


@pytest.mark.parametrize(
    "doc, field, secret",
    [
        ({"mqtt": {"password": ["hunter2"]}}, "mqtt.password", "hunter2"),
        ({"dashboard": {"token": 12345678}}, "dashboard.token", "12345678"),
        ({"source": {"uri": "rtsp://admin:hunter2@cam/1", "loop": "maybe"}}, "source.loop", "hunter2"),
        ({"mqtt": {"uri": "ftp://user:hunter2@broker"}}, "mqtt", "hunter2"),
    ],
)
def test_secrets_never_reach_error_messages(doc: dict, field: str, secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert f"field '{field}" in str(info.value)
    assert secret not in str(info.value)
