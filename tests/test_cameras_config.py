"""The ``cameras:`` section (issue 14): validation, resolution into CameraSpecs, and run's --source.

Every refusal is one line naming the field; the exact wording is asserted where the issue gives
it (duplicate names). Resolution: a camera inherits each source option it leaves out from
``source:``, a derived name that is taken gets ``-2``, ``-3``..., a reserved one is refused. The
CLI is only parsed here (flags to overrides to a Config): no pipeline runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from edgeseg.cli import _overrides, build_parser, main
from edgeseg.config import Config, load_config, parse_config
from edgeseg.config.cameras import (
    RESERVED_CAMERA_NAMES,
    CameraConfig,
    CameraPostprocessOverride,
    CameraSpec,
    camera_specs,
    resolve_names,
    split_named_source,
)
from edgeseg.config.errors import describe_validation_error, rule_error
from edgeseg.config.mqtt import MqttConfig
from edgeseg.config.schema import PostprocessConfig, SourceConfig
from edgeseg.errors import ConfigError
from edgeseg.service.reload_plan import FIELDS, Apply, plan_reload
from edgeseg.sources.base import SourceOptions

ROOT = Path(__file__).resolve().parents[1]
TRIANGLE = [[0, 0], [100, 0], [100, 100]]
SEGMENT = [[0, 0], [100, 100]]


def _refusal(doc: Dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, origin="cfg.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("cfg.yaml: field '"), message
    return message


def _cams(*cameras: Dict[str, Any], **sections: Any) -> Dict[str, Any]:
    return {"cameras": list(cameras), **sections}


# -- validation: one line each, naming the field ------------------------------------------------------


def test_duplicate_names_are_one_exact_line() -> None:
    doc = _cams({"name": "gate", "uri": "a.mp4"}, {"uri": "b.mp4"}, {"name": "gate", "uri": "c.mp4"})
    assert _refusal(doc) == "cfg.yaml: field 'cameras': camera name 'gate' is used twice (cameras[0] and cameras[2])"


@pytest.mark.parametrize("name", ["front door", "gate/1", "cam+", "#", "", "x" * 65, "caméra"])
def test_unsafe_names_are_refused(name: str) -> None:
    message = _refusal(_cams({"name": name, "uri": "a.mp4"}))
    assert message.startswith("cfg.yaml: field 'cameras.0.name': String should match pattern '^[A-Za-z0-9_-]{1,64}$'")


@pytest.mark.parametrize("name", sorted(RESERVED_CAMERA_NAMES))
def test_reserved_names_are_refused(name: str) -> None:
    message = _refusal(_cams({"uri": "a.mp4"}, {"name": name, "uri": "b.mp4"}))
    assert message.startswith("cfg.yaml: field 'cameras.1.name': is reserved, a device-level MQTT topic level")
    assert message.endswith(f"choose another name (got {name!r})")


def test_reserved_names_are_the_contract_s() -> None:
    assert RESERVED_CAMERA_NAMES == {"available", "stats", "detections", "events", "zones", "status", "snapshots",
                                     "cameras", "homeassistant"}
    parse_config(_cams({"name": "Status", "uri": "a.mp4"}, {"name": "events2", "uri": "b.mp4"}))  # topic levels differ


def test_a_reserved_derived_name_is_refused_without_echoing_the_uri() -> None:
    message = _refusal(_cams({"uri": "rtsp://admin:hunter2@status/stream1"}))
    assert message == ("cfg.yaml: field 'cameras.0.name': the name derived from the uri, 'status', is reserved (a "
                       "device-level MQTT topic level: available, cameras, detections, events, homeassistant, "
                       "snapshots, stats, status, zones); give the camera a name")
    parse_config(_cams({"name": "door", "uri": "rtsp://admin:hunter2@status/stream1"}))  # named: fine


def test_cameras_and_source_uri_are_exclusive() -> None:
    message = _refusal(_cams({"uri": "a.mp4"}, source={"uri": "b.mp4"}))
    assert message.startswith("cfg.yaml: field 'cameras': cameras and source.uri are exclusive")
    assert "(got" not in message


def test_source_name_is_refused_with_cameras() -> None:
    message = _refusal(_cams({"uri": "a.mp4"}, source={"name": "door"}))
    assert message.startswith("cfg.yaml: field 'source.name': names the one camera of source.uri")


@pytest.mark.parametrize("section, shape", [("zones", TRIANGLE), ("lines", SEGMENT)])
def test_top_level_zones_and_lines_are_refused_with_cameras(section: str, shape: List[List[int]]) -> None:
    doc = _cams({"uri": "a.mp4"}, tracker={"enabled": True}, **{section: [{"name": "z", "points": shape}]})
    assert _refusal(doc) == (f"cfg.yaml: field '{section}': top-level {section} are refused with cameras: a "
                             f"{section[:-1]} belongs to a camera, give it as cameras[i].{section}")
    del doc["tracker"]  # without the tracker too: where zones belong is the first thing to say
    assert f"field '{section}': top-level" in _refusal(doc)


@pytest.mark.parametrize("section, shape", [("zones", TRIANGLE), ("lines", SEGMENT)])
def test_a_camera_s_zones_and_lines_need_the_tracker(section: str, shape: List[List[int]]) -> None:
    doc = _cams({"uri": "a.mp4"}, {"uri": "b.mp4", section: [{"name": "z", "points": shape}]})
    assert _refusal(doc) == (f"cfg.yaml: field 'cameras.1.{section}': zones and lines need the tracker: set "
                             "tracker.enabled: true (or run --track)")
    config = parse_config({**doc, "tracker": {"enabled": True}})
    assert [len(getattr(s, section)) for s in config.camera_specs()] == [0, 1]


def test_zone_and_line_names_are_unique_within_a_camera_not_across() -> None:
    zone = {"name": "lot", "points": TRIANGLE}
    line = {"name": "gate", "points": SEGMENT}
    on = {"tracker": {"enabled": True}}
    message = _refusal(_cams({"uri": "a.mp4", "zones": [zone, zone]}, **on))
    assert message.startswith("cfg.yaml: field 'cameras.0.zones': name 'lot' is used by zones.0 and zones.1")
    message = _refusal(_cams({"uri": "a.mp4"}, {"uri": "b.mp4", "lines": [line, line]}, **on))
    assert message.startswith("cfg.yaml: field 'cameras.1.lines': name 'gate' is used by lines.0 and lines.1")
    parse_config(_cams({"uri": "a.mp4", "zones": [zone], "lines": [line]},
                       {"uri": "b.mp4", "zones": [zone], "lines": [line]}, **on))


@pytest.mark.parametrize(
    "camera, field, expected",
    [
        ({}, "cameras.0.uri", "required"),
        ({"uri": ""}, "cameras.0.uri", "at least 1 character"),
        ({"uri": "a", "loop": "maybe"}, "cameras.0.loop", "valid boolean"),
        ({"uri": "a", "fps": 481}, "cameras.0.fps", "less than or equal to 480"),
        ({"uri": "a", "width": -1}, "cameras.0.width", "greater than or equal to 0"),
        ({"uri": "a", "max_pixels": 0}, "cameras.0.max_pixels", "greater than or equal to 1"),
        ({"uri": "a", "imgsz": 333}, "cameras.0.imgsz", "multiple of 32"),
        ({"uri": "a", "imgsz": 2048}, "cameras.0.imgsz", "less than or equal to 1280"),
        ({"uri": "a", "postprocess": {"conf_threshold": 1.5}}, "cameras.0.postprocess.conf_threshold", "less than 1"),
        ({"uri": "a", "postprocess": {"nms": "hard"}}, "cameras.0.postprocess.nms", "unknown key"),
        ({"uri": "a", "sinks": "jsonl:x"}, "cameras.0.sinks", "valid list"),
        ({"uri": "a", "tracker": {}}, "cameras.0.tracker", "unknown key"),
        ({"uri": "a", "reconnect_initial_s": 2, "reconnect_max_s": 1}, "cameras.0.reconnect_max_s",
         "must be >= reconnect_initial_s (1 < 2)"),
        ({"uri": "a", "reconnect_max_s": 0.1}, "cameras.0.reconnect_max_s",
         "reconnect_max_s must be >= reconnect_initial_s, found 0.1 < 0.5"),
        ({"uri": "a", "reconnect_initial_s": 60}, "cameras.0.reconnect_initial_s",
         "reconnect_max_s must be >= reconnect_initial_s, found 30 < 60"),
    ],
)
def test_a_camera_s_fields_are_bounded(camera: Dict[str, Any], field: str, expected: str) -> None:
    message = _refusal(_cams(camera))
    assert message.startswith(f"cfg.yaml: field '{field}': ") and expected in message, message


def test_an_empty_camera_list_is_no_list() -> None:
    zone = {"name": "lot", "points": TRIANGLE}
    config = parse_config({"cameras": [], "source": {"uri": "clips/gate.mp4", "name": "door"}, "zones": [zone],
                           "tracker": {"enabled": True}})
    assert not config.uses_camera_topics()
    assert [(s.name, s.uri, [z.name for z in s.zones]) for s in config.camera_specs()] == [
        ("door", "clips/gate.mp4", ["lot"])]


def test_the_list_is_not_a_mapping() -> None:
    message = _refusal({"cameras": {"gate": "rtsp://u:hunter2@h/1"}})
    assert message.startswith("cfg.yaml: field 'cameras': Input should be a valid list") and "hunter2" not in message


def test_pipeline_batch_and_gather_ms() -> None:
    pipeline = parse_config({}).pipeline
    assert (pipeline.batch, pipeline.gather_ms) == (1, 5.0)
    assert parse_config({"pipeline": {"batch": 32, "gather_ms": 0}}).pipeline.batch == 32
    assert parse_config({"pipeline": {"gather_ms": 1000}}).pipeline.gather_ms == 1000.0
    for value, expected in ((0, "greater than or equal to 1"), (33, "less than or equal to 32"), (2.5, "integer")):
        message = _refusal({"pipeline": {"batch": value}})
        assert message.startswith("cfg.yaml: field 'pipeline.batch': ") and expected in message
    for ms, expected in ((-1, "greater than or equal to 0"), (1000.5, "less than or equal to 1000")):
        message = _refusal({"pipeline": {"gather_ms": ms}})
        assert message.startswith("cfg.yaml: field 'pipeline.gather_ms': ") and expected in message


def test_override_bounds_are_the_shared_sections() -> None:
    """A camera's optional copy of a field checks exactly what the shared field checks."""
    pairs = [(CameraPostprocessOverride, PostprocessConfig, name) for name in CameraPostprocessOverride.model_fields]
    pairs += [(CameraConfig, SourceConfig, name) for name in
              ("loop", "reconnect_initial_s", "reconnect_max_s", "width", "height", "fps", "max_pixels")]
    for own, shared, name in pairs:
        assert own.model_fields[name].metadata == shared.model_fields[name].metadata, name
        assert own.model_fields[name].default is None


def test_rule_errors_keep_their_path_and_mask_credentials() -> None:
    from pydantic import ValidationError, model_validator

    from edgeseg.strict import StrictModel

    class Inner(StrictModel):
        uri: str = "x"

        @model_validator(mode="after")
        def _rule(self) -> Inner:
            raise rule_error("uri", f"cannot reach {self.uri}")

    class Outer(StrictModel):
        items: List[Inner]

    with pytest.raises(ValidationError) as info:
        Outer.model_validate({"items": [{}, {"uri": "rtsp://admin:hunter2@cam/1"}]})
    line = describe_validation_error(info.value, "cfg")
    assert line.startswith("field 'cfg.items.0.uri': cannot reach x; field 'cfg.items.1.uri': cannot reach rtsp://")
    assert "hunter2" not in line and "(got" not in line


# -- resolution ----------------------------------------------------------------------------------------


def test_cameras_inherit_what_they_leave_out_from_source() -> None:
    source = {"loop": True, "reconnect_initial_s": 2, "reconnect_max_s": 20, "width": 1280, "height": 720, "fps": 15,
              "max_pixels": 1000}
    config = parse_config(_cams(
        {"name": "gate", "uri": "rtsp://cam-gate/1"},
        {"uri": "clips/yard.mp4", "loop": False, "reconnect_max_s": 5, "fps": 0, "imgsz": 320,
         "postprocess": {"conf_threshold": 0.4, "masks": False}, "sinks": ["jsonl:out/yard.jsonl"]},
        source=source,
    ))
    gate, yard = config.camera_specs()
    assert gate == CameraSpec("gate", "rtsp://cam-gate/1",
                              SourceOptions(True, 2.0, 20.0, 1280, 720, 15, max_pixels=1000), None, {}, (), (), ())
    assert yard == CameraSpec("yard", "clips/yard.mp4",
                              SourceOptions(False, 2.0, 5.0, 1280, 720, 0, max_pixels=1000), 320,
                              {"conf_threshold": 0.4, "masks": False}, (), (), ("jsonl:out/yard.jsonl",))
    assert camera_specs(config) == [gate, yard]


def test_derived_names_and_collision_suffixes() -> None:
    config = parse_config(_cams(
        {"uri": "a/gate.mp4"}, {"uri": "b/gate.mp4"}, {"name": "gate", "uri": "c.mp4"},
        {"name": "gate-2", "uri": "d.mp4"}, {"uri": "rtsp://user:pw@cam-door.local:554/s1"},
        {"uri": "v4l2:///dev/video0"}, {"uri": "csi://0"}, {"uri": "clips/*.jpg"}, {"uri": "!!!"}, {"uri": "???"},
    ))
    assert [s.name for s in config.camera_specs()] == [
        "gate-3", "gate-4", "gate", "gate-2", "cam-door-local", "video0", "csi0", "clips", "camera", "camera-2"]
    assert config.camera_name() == "gate-3"  # the first camera's


def test_a_suffixed_name_stays_within_64_characters() -> None:
    long = "x" * 64
    names = resolve_names([CameraConfig(uri=f"{long}.mp4"), CameraConfig(uri=f"d/{long}.mp4")])
    assert names == [long, "x" * 62 + "-2"]
    assert parse_config(_cams({"uri": f"{long}.mp4"}, {"uri": f"d/{long}.mp4"})).camera_specs()[1].name == names[1]


def test_without_cameras_the_source_is_the_one_camera() -> None:
    zone = {"name": "lot", "points": TRIANGLE}
    line = {"name": "gate", "points": SEGMENT}
    config = parse_config({"source": {"uri": "clips/gate.mp4", "loop": True}, "zones": [zone], "lines": [line],
                           "tracker": {"enabled": True}})
    (spec,) = config.camera_specs()
    assert spec == CameraSpec("gate", "clips/gate.mp4", config.source_options(), None, {}, tuple(config.zones),
                              tuple(config.lines), ())
    assert config.camera_name() == "gate"
    assert parse_config({"source": {"uri": "clips/gate.mp4", "name": "door"}}).camera_specs()[0].name == "door"
    assert parse_config({}).camera_specs()[0].name == "camera"


@pytest.mark.skipif("camera_topics" not in MqttConfig.model_fields, reason="mqtt.camera_topics not added yet")
def test_camera_topics_resolve() -> None:
    def topics(mode: str, **doc: Any) -> bool:
        return parse_config({**doc, "mqtt": {"camera_topics": mode}}).uses_camera_topics()

    one = {"source": {"uri": "a.mp4"}}
    many = _cams({"uri": "a.mp4"})
    assert (topics("auto", **one), topics("on", **one), topics("off", **one)) == (False, True, False)
    assert (topics("auto", **many), topics("on", **many), topics("off", **many)) == (True, True, False)
    assert topics("auto", cameras=[], source={"uri": "a.mp4"}) is False
    # one source under its own topic level: a reserved name would publish into the device's levels
    with pytest.raises(ConfigError, match=r"field 'source.name': camera name 'status' is reserved"):
        parse_config({"source": {"uri": "a.mp4", "name": "status"}, "mqtt": {"camera_topics": "on"}})
    reserved_derived = r"field 'source.uri': camera name 'events' is reserved, .*; set source.name$"
    with pytest.raises(ConfigError, match=reserved_derived):
        parse_config({"source": {"uri": "clips/events.mp4"}, "mqtt": {"camera_topics": "on"}})
    parse_config({"source": {"uri": "clips/events.mp4"}})  # no camera level: the name is only a label


def test_uses_camera_topics_without_the_mqtt_field() -> None:
    """Until (or unless) mqtt.camera_topics exists, "auto" is assumed."""
    assert parse_config(_cams({"uri": "a.mp4"})).uses_camera_topics()
    assert not parse_config({"source": {"uri": "a.mp4"}}).uses_camera_topics()


def test_the_example_config() -> None:
    config = load_config(ROOT / "configs" / "cameras.yaml")
    specs = config.camera_specs()
    assert [(s.name, s.uri) for s in specs] == [
        ("gate", "out/demo/demo.mp4"), ("yard", "out/demo/demo.mp4"), ("crossings", "out/tracks/crossings.mp4")]
    assert [[z.name for z in s.zones] for s in specs] == [["left_half"], [], ["lot"]]
    assert [[ln.name for ln in s.lines] for s in specs] == [[], ["middle"], ["gate"]]
    assert specs[1].postprocess == {"conf_threshold": 0.3}
    assert specs[2].sinks == ("events:out/cameras/crossings-events.jsonl",)
    assert config.uses_camera_topics() and config.source.uri is None


# -- reload --------------------------------------------------------------------------------------------


def test_reload_classifies_cameras_and_batching_as_the_pipeline_s() -> None:
    assert FIELDS["cameras"] is Apply.PIPELINE
    assert FIELDS["pipeline.batch"] is Apply.PIPELINE and FIELDS["pipeline.gather_ms"] is Apply.PIPELINE
    running = parse_config(_cams({"uri": "a.mp4"}, {"uri": "b.mp4"}))
    added = parse_config(_cams({"uri": "a.mp4"}, {"uri": "b.mp4"}, {"uri": "c.mp4"}, pipeline={"batch": 4}))
    plan = plan_reload(running, added)
    assert plan.fields() == ("cameras", "pipeline.batch") and plan.fields(Apply.PIPELINE) == plan.fields()
    assert plan.refusal() is None


# -- the command line (parsed only) --------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _config(*argv: str, path: Optional[Path] = None) -> Config:
    return load_config(path, _overrides(_args(*argv)))


@pytest.mark.parametrize(
    "text, name, uri",
    [
        ("clips/gate.mp4", None, "clips/gate.mp4"),
        ("gate=clips/gate.mp4", "gate", "clips/gate.mp4"),
        ("gate=rtsp://user:p=w@cam/1?a=b", "gate", "rtsp://user:p=w@cam/1?a=b"),
        ("rtsp://cam/stream?a=b", None, "rtsp://cam/stream?a=b"),
        ("http://cam/mjpeg=1", None, "http://cam/mjpeg=1"),
        ("C:\\clips\\a=b.mp4", None, "C:\\clips\\a=b.mp4"),
        ("./a=b.mp4", None, "./a=b.mp4"),
        ("clips/a=b.mp4", None, "clips/a=b.mp4"),
        ("front door=x.mp4", None, "front door=x.mp4"),
        ("a-b_c=v4l2:///dev/video0", "a-b_c", "v4l2:///dev/video0"),
        ("=x.mp4", None, "=x.mp4"),
    ],
)
def test_split_named_source(text: str, name: Optional[str], uri: str) -> None:
    assert split_named_source(text) == (name, uri)


def test_a_file_named_like_name_equals_uri_stays_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gate=1.mp4").write_bytes(b"")
    (tmp_path / "yard=").mkdir()
    assert split_named_source("gate=1.mp4") == (None, "gate=1.mp4")
    assert split_named_source("yard=") == (None, "yard=")
    os.rmdir(tmp_path / "yard=")
    with pytest.raises(ValueError, match="expected NAME=URI, found nothing after 'yard='"):
        split_named_source("yard=")


def test_one_source_is_source_uri_as_before() -> None:
    config = _config("run", "--source", "clips/gate.mp4")
    assert (config.source.uri, config.source.name, config.cameras) == ("clips/gate.mp4", None, [])
    assert [s.name for s in config.camera_specs()] == ["gate"] and not config.uses_camera_topics()
    named = _config("run", "--source", "door=clips/gate.mp4", "--loop")
    assert (named.source.uri, named.source.name, named.source.loop) == ("clips/gate.mp4", "door", True)
    assert _config("run", "--source", "clips/gate.mp4", "--camera", "door").camera_name() == "door"
    assert _config("run", "--source", "door=clips/gate.mp4", "--camera", "door").camera_name() == "door"


def test_several_sources_are_cameras() -> None:
    config = _config("run", "--source", "a/gate.mp4", "--source", "yard=rtsp://cam/1?x=y", "--source", "b/gate.mp4",
                     "--loop")
    assert config.source.uri is None
    specs = config.camera_specs()
    assert [(s.name, s.uri) for s in specs] == [("gate", "a/gate.mp4"), ("yard", "rtsp://cam/1?x=y"),
                                                ("gate-2", "b/gate.mp4")]
    assert all(s.source.loop for s in specs) and config.uses_camera_topics()


def test_flags_replace_the_file_s_sources(tmp_path: Path) -> None:
    single = tmp_path / "single.yaml"
    single.write_text("source: {uri: clips/old.mp4, name: old, reconnect_max_s: 9}\n")
    many = _config("run", "--source", "a.mp4", "--source", "b.mp4", path=single)
    assert [s.name for s in many.camera_specs()] == ["a", "b"]
    assert all(s.source.reconnect_max_s == 9 for s in many.camera_specs())  # the rest of source: is inherited
    cameras = tmp_path / "cameras.yaml"
    cameras.write_text("cameras: [{name: x, uri: x.mp4}, {name: y, uri: y.mp4}]\n")
    one = _config("run", "--source", "c.mp4", path=cameras)
    assert [(s.name, s.uri) for s in one.camera_specs()] == [("c", "c.mp4")]
    assert [s.name for s in load_config(cameras, _overrides(_args("run"))).camera_specs()] == ["x", "y"]


def test_only_run_repeats_source() -> None:
    assert _args("run", "--source", "a", "--source", "b").source == ["a", "b"]
    assert _args("serve", "--source", "a=b").source == "a=b"
    assert _overrides(_args("bench", "--source", "a=b")) == {"source": {"uri": "a=b"}}
    assert _overrides(_args("run")) == {}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--source", "gate=a.mp4", "--source", "gate=b.mp4"],
         "edgeseg: command line: field 'cameras': camera name 'gate' is used twice (cameras[0] and cameras[1])"),
        (["--source", "a.mp4", "--source", "events=b.mp4"],
         "edgeseg: command line: field 'cameras.1.name': is reserved, a device-level MQTT topic level"),
        (["--source", "a.mp4", "--source", "b.mp4", "--camera", "door"],
         "edgeseg: --camera names the one source: with several --source, name each as --source NAME=URI"),
        (["--source", "gate=a.mp4", "--camera", "door"],
         "edgeseg: --camera 'door' and --source gate=...: two names for one camera, give one"),
        (["--source", "gate="], "edgeseg: --source: expected NAME=URI, found nothing after 'gate='"),
    ],
)
def test_bad_sources_are_one_line_before_anything_opens(
    capsys: pytest.CaptureFixture[str], argv: List[str], expected: str
) -> None:
    assert main(["run", "--model", "/nonexistent/m.onnx", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected), err


def test_the_same_duplicate_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cameras: [{name: gate, uri: a.mp4}, {name: gate, uri: b.mp4}]\n")
    assert main(["config", "--check", str(path)]) == 2
    assert capsys.readouterr().err == (f"edgeseg: {path}: field 'cameras': camera name 'gate' is used twice "
                                       "(cameras[0] and cameras[1])\n")
