"""The generated configuration reference and ``edgeseg config`` (--schema, --reference, --check).

docs/configuration.md is rendered from the models; these tests fail when a field is added (or a
description, default or bound changed) without regenerating the page, when a key has no
description, and when the page leaves out a key the validator accepts. ``--check`` must give the
daemon's verdict without opening the model or the source, and never echo a secret.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

import pytest
from pydantic import BaseModel, Field, SecretStr

from edgeseg.cli import main
from edgeseg.config import Config
from edgeseg.config.reference import leaf_fields, render_reference
from edgeseg.strict import StrictModel

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"
REGENERATE = "python -m edgeseg.config.reference > docs/configuration.md"
TOKEN = "s3cret-dashboard-token-0123456789"


def _dotted_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key the validator accepts, found independently of the generator's own walk."""
    for name, field in model.model_fields.items():
        yield prefix + name
        annotation: Any = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                yield from _dotted_paths(candidate, f"{prefix}{name}.")


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _run(argv: List[str], capsys: pytest.CaptureFixture[str]) -> Tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- the committed page --------------------------------------------------------------------------


def test_committed_reference_is_the_generated_one() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render_reference(), (
        f"docs/configuration.md is out of date with edgeseg/config/: run `{REGENERATE}`"
    )


def test_every_key_has_a_description() -> None:
    missing = [f.path for f in leaf_fields(Config) if not f.description.strip()]
    assert not missing, f"fields without a description (add one in edgeseg/config/): {missing}"


def test_the_page_lists_every_key_the_validator_accepts() -> None:
    page = render_reference()
    paths = list(_dotted_paths(Config))
    assert len(paths) > 90  # every section, nested ones (mqtt.tls, mqtt.queue) included
    absent = [p for p in paths if f"| `{p}` |" not in page]
    assert not absent
    listed = [f.path for f in leaf_fields(Config)]
    assert sorted(listed) == sorted(paths)  # each once, nothing the validator would refuse


def test_the_page_states_defaults_and_bounds_as_the_validator_applies_them() -> None:
    page = render_reference()
    assert "| `model.imgsz` | integer or null | `null` | >= 320, <= 1280, multiple of 32 |" in page
    assert "| `postprocess.conf_threshold` | number | `0.25` | >= 0.0, < 1.0 |" in page
    assert '| `output.mask_format` | string | `"rle"` | one of `"rle"`, `"polygon"`, `"none"` |' in page
    assert "| `mqtt.tls` | section or null, [below](#mqtttls) | `null` |" in page
    assert "\n### `mqtt.tls`\n" in page
    assert "pattern `^[A-Za-z0-9][A-Za-z0-9_.-]*$`" in page


class _Inner(StrictModel):
    depth: int = Field(2, ge=1, description="how deep")


class _Toy(StrictModel):
    """Toy rules apply."""

    mode: Literal["a|b", "c"] = Field("c", description="uses <tag> and a|pipe, keeps `<code>`")
    host: str = Field(default_factory=lambda: "host-xyz-123", description="computed where it runs")
    password: Optional[SecretStr] = Field(SecretStr("hunter2"), description="secret")
    sizes: List[int] = Field(default_factory=lambda: [320], min_length=1, max_length=4, description="sizes")
    inner: _Inner = Field(default_factory=_Inner, description="nested")
    table: Dict[str, int] = Field(default_factory=dict, description="a mapping")


def test_rows_are_escaped_and_computed_or_secret_defaults_are_not_shown() -> None:
    page = render_reference(_Toy)
    mode = next(line for line in page.splitlines() if line.startswith("| `mode`"))
    assert mode.count(" | ") == 4  # the pipe inside the literal and the description is escaped
    assert "\\<tag>" in mode and "a\\|pipe" in mode and "`<code>`" in mode
    assert "host-xyz-123" not in page and "(computed at start, see description)" in page
    assert "hunter2" not in page and "(set, not shown)" in page
    assert "| `sizes` | list of integer | `[320]` | items >= 1, items <= 4 |" in page
    assert "| `inner.depth` | integer | `2` | >= 1 | how deep |" in page
    assert "\n## `inner`\n\nnested.\n" in page
    assert "\n## Top level\n\nToy rules apply.\n" in page  # a model's docstring introduces its table


def test_the_page_is_the_same_under_another_interpreter() -> None:
    """Python 3.8 (JetPack 5) and this one may run different pydantic releases: same bytes."""
    py38 = ROOT / ".venv-py38" / "bin" / "python"
    if not py38.exists() or sys.version_info[:2] == (3, 8):
        pytest.skip("no .venv-py38 to compare with (make test-py38 sets it up)")
    out = subprocess.run([str(py38), "-m", "edgeseg.config.reference"], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert out == render_reference()


# -- edgeseg config --------------------------------------------------------------------------------


def test_schema_is_the_models_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["config", "--schema"], capsys)
    assert code == 0
    schema = json.loads(out)
    assert schema == json.loads(json.dumps(Config.model_json_schema()))
    conf = schema["$defs"]["PostprocessConfig"]["properties"]["conf_threshold"]
    assert conf["default"] == 0.25 and conf["exclusiveMaximum"] == 1.0 and conf["description"]
    assert schema["additionalProperties"] is False


def test_reference_flag_prints_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["config", "--reference"], capsys)
    assert code == 0 and out == render_reference()


def test_repository_configs_check(capsys: pytest.CaptureFixture[str]) -> None:
    """configs/*.yaml validate (their model and source need not exist here: nothing is opened)."""
    files = sorted(str(p) for p in (ROOT / "configs").glob("*.yaml"))
    assert len(files) >= 2
    code, out, err = _run(["config", "--check", *files, "--serve"], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"{f}: ok" for f in files]


def test_check_does_not_open_the_model_or_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "c.yaml", "model: {path: /nonexistent/model.onnx}\nsource: {uri: rtsp://cam.invalid/1}\n"
                                      "output: {sinks: ['jsonl:/nonexistent/r.jsonl']}\n")
    assert _run(["config", "--check", path], capsys) == (0, f"{path}: ok\n", "")


def test_check_refuses_in_one_line_without_echoing_secrets(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "bad.yaml", f"dashboard: {{host: 0.0.0.0, token: {TOKEN}}}\n"
                                       "pipeline: {inference_workers: 99}\n")
    short = _write(tmp_path, "short.yaml", "dashboard: {token: hunter2xx}\nmqtt: {uri: 'mqtt://u:pw1234@b'}\n")
    good = _write(tmp_path, "good.yaml", "log_level: debug\n")
    code, out, err = _run(["config", "--check", bad, short, good], capsys)
    assert code == 2
    assert out == f"{good}: ok\n"
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"edgeseg: {bad}: field 'pipeline.inference_workers'")
    assert lines[1].startswith(f"edgeseg: {short}:") and "dashboard.token" in lines[1]
    for secret in (TOKEN, "hunter2xx", "pw1234"):
        assert secret not in err + out


@pytest.mark.parametrize(
    "text, serve, expected",
    [
        ("source: {loop: maybe}\n", False, "field 'source.loop'"),
        ("unknown_section: {}\n", False, "field 'unknown_section': unknown key"),
        ("output: {sinks: ['jsnl:out/r.jsonl']}\n", False, "output.sinks 'jsnl:out/r.jsonl': expected KIND:PATH"),
        ("output: {sinks: ['coco:out/r.json']}\n", True, "refused under serve"),
        ("model: {}\nmodel: {}\n", False, "duplicate key 'model' at lines 1 and 2"),
    ],
)
def test_check_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, serve: bool,
                        expected: str) -> None:
    path = _write(tmp_path, "c.yaml", text)
    code, out, err = _run(["config", "--check", path] + (["--serve"] if serve else []), capsys)
    assert code == 2 and out == ""
    assert err.startswith("edgeseg: ") and path in err and expected in err and err.count("\n") == 1


def test_serve_checks_only_with_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "c.yaml", "output: {sinks: ['coco:out/r.json']}\n")
    assert _run(["config", "--check", path], capsys)[0] == 0
    code, _, err = _run(["config", "--schema", "--serve"], capsys)
    assert code == 2 and "--serve: only with --check" in err


def test_missing_file_and_no_action(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["config", "--check", "/nonexistent/c.yaml"], capsys)
    assert code == 2 and err == "edgeseg: config file not found: /nonexistent/c.yaml\n"
    with pytest.raises(SystemExit) as info:
        main(["config"])
    assert info.value.code == 2
    assert "one of the arguments --schema --reference --check is required" in capsys.readouterr().err
