"""Hardening of file names, decompression bombs, long path components and numeric CLI flags.

Everything here uses real files with real odd names in tmp_path: a name holding a Latin-1 byte
(what a camera or a Windows share writes) reaches Python as a lone surrogate, on which OpenCV
crashes the whole process (SIGSEGV), so a regression shows as a crashed test run, not a quiet
pass. Bombs are real encodings whose header is patched to claim a huge size: the guard must
refuse them on the header alone, before a byte is decoded.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from edgeseg import MAX_IMAGE_PIXELS
from edgeseg.cli import build_parser, main
from edgeseg.config import load_config
from edgeseg.errors import ConfigError, ModelError, SinkError, SourceError
from edgeseg.model import load_model
from edgeseg.sinks import create_sink
from edgeseg.sinks.serialize import frame_result_to_dict
from edgeseg.sources import ImageSource, SourceOptions, open_source
from edgeseg.sources.fsnames import printable_name
from edgeseg.sources.imageheader import image_size
from edgeseg.sources.images import decode_image
from edgeseg.structures import Frame, FrameResult, Instances

#: A file name with one Latin-1 byte, as Python's file functions hand it over.
LATIN1_NAME = os.fsdecode(b"caf\xe9")
#: Longer than the 255 bytes Linux allows in one path component.
LONG_COMPONENT = "n" * 300
SMALL_SIZE = (37, 23)  # (width, height), odd on purpose so that width and height cannot be swapped
BOMB_SIZE = (20000, 20000)
#: The small model shipped in the repository: the run command loads the model before the source.
DEMO_MODEL = Path(__file__).resolve().parents[1] / "engines" / "demo" / "demo-320-fp32.onnx"


def _image(width: int = SMALL_SIZE[0], height: int = SMALL_SIZE[1]) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 1] = np.arange(width, dtype=np.uint8)[None, :] * 5
    return image


def _encode(ext: str, image: np.ndarray | None = None) -> bytes:
    ok, data = cv2.imencode(ext, _image() if image is None else image)
    assert ok, ext
    return data.tobytes()


def _write(path: Path, data: bytes) -> Path:
    with open(path, "wb") as file:  # open(), not Path.write_bytes: the same for every odd name
        file.write(data)
    return path


def _strict_json(line: bytes) -> dict:
    """Parse as a strict parser would: UTF-8 only, and no unpaired surrogate escapes."""
    doc = json.loads(line.decode("utf-8", "strict"))

    def check(value: object) -> None:
        if isinstance(value, str):
            value.encode("utf-8", "strict")  # raises on a lone surrogate (\\udcNN in the JSON)
        elif isinstance(value, dict):
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)

    check(doc)
    return doc


def _result(name: str, source: str) -> FrameResult:
    frame = Frame(image=_image(), frame_id=0, source=source, timestamp=1.7e9, name=name)
    return FrameResult(
        frame=frame, instances=Instances.empty((SMALL_SIZE[1], SMALL_SIZE[0]), ("a",)), model="m",
        resolution=(320, 320), latency_ms={},
    )


def _video(path: Path, frames: int = 3) -> Path:
    ascii_path = path.with_name("plain.mp4")
    writer = cv2.VideoWriter(str(ascii_path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, SMALL_SIZE)
    for _ in range(frames):
        writer.write(_image())
    writer.release()
    os.rename(ascii_path, path)  # Python renames to any name; OpenCV could not have written it
    return path


# ------------------------------------------------------------------- names that are not UTF-8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain.jpg", "plain.jpg"),
        ("héllo.jpg", "héllo.jpg"),  # valid UTF-8 stays as it is
        (LATIN1_NAME + ".jpg", "caf\\xe9.jpg"),  # a file-system byte shows as the byte
        ("a\ud800b", "a\\ud800b"),  # a surrogate from elsewhere (a JSON escape) shows as itself
        ("rtsp://cam/" + os.fsdecode(b"\xff\xfe"), "rtsp://cam/\\xff\\xfe"),
    ],
)
def test_printable_name_is_valid_utf8(text: str, expected: str) -> None:
    """What goes into JSON and messages must encode to UTF-8, else strict parsers refuse it."""
    out = printable_name(text)
    assert out == expected
    out.encode("utf-8", "strict")


def test_image_folder_with_latin1_name_is_read(tmp_path: Path) -> None:
    """Both images of the folder come through; the odd name is read through bytes."""
    _write(tmp_path / (LATIN1_NAME + ".jpg"), _encode(".jpg"))
    _write(tmp_path / "plain.png", _encode(".png"))
    with open_source(str(tmp_path)) as source:
        frames = [source.read() for _ in range(source.length or 0)]
    names = sorted(f.name for f in frames if f is not None)
    assert names == sorted([LATIN1_NAME + ".jpg", "plain.png"])
    assert all(f is not None and f.image.shape == (SMALL_SIZE[1], SMALL_SIZE[0], 3) for f in frames)


@pytest.mark.parametrize(
    ("make_uri", "fragment"),
    [
        (lambda d: str(_video(d / (LATIN1_NAME + ".mp4"))), "caf\\xe9.mp4"),
        (lambda d: "file://" + str(_video(d / (LATIN1_NAME + ".mp4"))), "caf\\xe9.mp4"),
        (lambda d: "rtsp://user:secret@127.0.0.1:1/" + LATIN1_NAME, "caf\\xe9"),
        (lambda d: "http://127.0.0.1:1/" + LATIN1_NAME + ".mjpg", "caf\\xe9"),
    ],
)
def test_video_and_stream_with_latin1_name_are_refused_in_one_line(
    tmp_path: Path, make_uri: Callable[[Path], str], fragment: str
) -> None:
    """OpenCV's VideoCapture crashes on such a name; the source refuses it before, naming it."""
    with pytest.raises(SourceError) as raised:
        open_source(make_uri(tmp_path))
    message = str(raised.value)
    assert fragment in message and "\n" not in message and "secret" not in message
    message.encode("utf-8", "strict")


@pytest.mark.parametrize("spec_path", [LATIN1_NAME + ".mp4", LATIN1_NAME + ".avi", f"d{LATIN1_NAME}/out.mkv"])
def test_video_sink_with_latin1_name_is_refused_in_one_line(tmp_path: Path, spec_path: str) -> None:
    with pytest.raises(SinkError) as raised:
        create_sink(f"video:{tmp_path / spec_path}")
    assert "\\xe9" in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / spec_path).parent.exists() or (tmp_path / spec_path).parent == tmp_path


@pytest.mark.parametrize("kind", ["images", "video"])
def test_image_sink_writes_latin1_names_through_bytes(tmp_path: Path, kind: str) -> None:
    """The annotated JPEG keeps the input's name bytes; it decodes as the frame it was."""
    out = tmp_path / ("out" + LATIN1_NAME)
    with create_sink(f"{kind}:{out}") as sink:
        sink.write(_result(LATIN1_NAME + ".png", str(tmp_path)))
    written = out / (LATIN1_NAME + ".jpg")
    assert os.fsencode(written).endswith(b"caf\xe9.jpg")
    image, why = decode_image(written)
    assert why == "" and image is not None and image.shape == (SMALL_SIZE[1], SMALL_SIZE[0], 3)


@pytest.mark.parametrize(
    ("name", "source", "expected_name", "expected_source"),
    [
        (LATIN1_NAME + ".jpg", "/data/" + LATIN1_NAME, "caf\\xe9.jpg", "/data/caf\\xe9"),
        ("ok.jpg", "rtsp://cam/" + os.fsdecode(b"\xff"), "ok.jpg", "rtsp://cam/\\xff"),
        ("a\ud800.jpg", "x", "a\\ud800.jpg", "x"),
        ("plain.jpg", "/data", "plain.jpg", "/data"),
    ],
)
def test_jsonl_lines_parse_strictly(
    tmp_path: Path, name: str, source: str, expected_name: str, expected_source: str
) -> None:
    """json.dumps would write \\udce9, which strict parsers refuse as an unpaired surrogate."""
    path = tmp_path / (LATIN1_NAME + ".jsonl")  # the output file's own name may be odd too
    with create_sink(f"jsonl:{path}") as sink:
        sink.write(_result(name, source))
    with open(path, "rb") as file:
        doc = _strict_json(file.readline())
    assert (doc["name"], doc["source"]) == (expected_name, expected_source)
    assert frame_result_to_dict(_result(name, source), "none")["name"] == expected_name


def test_skipped_image_log_line_is_printable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A skipped odd-named file is logged as one line naming it in a printable form."""
    _write(tmp_path / (LATIN1_NAME + ".jpg"), b"not an image")
    _write(tmp_path / "good.png", _encode(".png"))
    with open_source(str(tmp_path)) as source:
        frames = [source.read() for _ in range(2)]
    assert [f is not None for f in frames] == [False, True]
    lines = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(lines) == 1 and "caf\\xe9.jpg" in lines[0] and "\n" not in lines[0]


# --------------------------------------------------------------------------- decompression bombs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _patched_png(width: int, height: int) -> bytes:
    """A real PNG whose IHDR (with a valid CRC) claims ``width`` x ``height``."""
    data = bytearray(_encode(".png"))
    ihdr = bytes(data[16:29])
    patched = struct.pack(">II", width, height) + ihdr[8:]
    data[8:33] = _png_chunk(b"IHDR", patched)
    return bytes(data)


def _zlib_bomb_png(width: int, height: int) -> bytes:
    """A complete, valid grey PNG of zeros: a few hundred KB that decode to width*height bytes."""
    row = b"\x00" * (width + 1)  # filter byte + pixels
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _patched_jpeg(width: int, height: int) -> bytes:
    data = bytearray(_encode(".jpg"))
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _patched_bmp(width: int, height: int) -> bytes:
    data = bytearray(_encode(".bmp"))
    data[18:26] = struct.pack("<ii", width, -height)  # top-down rows: a negative height
    return bytes(data)


def _patched_webp(width: int, height: int) -> bytes:
    data = bytearray(_encode(".webp", _image()))
    assert data[12:16] in (b"VP8 ", b"VP8L")
    if data[12:16] == b"VP8L":
        data[21:25] = struct.pack("<I", (width - 1) | ((height - 1) << 14))
    else:
        data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


@pytest.mark.parametrize(
    ("ext", "size"),
    [(".png", SMALL_SIZE), (".jpg", SMALL_SIZE), (".bmp", SMALL_SIZE), (".webp", SMALL_SIZE), (".tiff", SMALL_SIZE),
     (".ppm", SMALL_SIZE), (".pgm", SMALL_SIZE), (".ras", SMALL_SIZE),
     (".jp2", (301, 203))],  # OpenJPEG refuses images smaller than its resolution levels
)
def test_header_size_of_real_encodings(ext: str, size: tuple[int, int]) -> None:
    """The header reader agrees with what OpenCV encoded, for every format it claims to read."""
    image = _image(*size)
    image = image[:, :, 0] if ext == ".pgm" else image
    try:
        ok, data = cv2.imencode(ext, image)
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"this OpenCV cannot encode {ext}")
    assert image_size(data.tobytes()) == size


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", None),
        (b"\x89PNG\r\n\x1a\n", None),  # signature only
        (b"\xff\xd8\xff\xe0\x00", None),  # JPEG cut inside the first segment
        (b"P6\n# comment\n640 480\n255\n", (640, 480)),
        (b"P7\nWIDTH 12\nHEIGHT 34\nDEPTH 3\nMAXVAL 255\nENDHDR\n", (12, 34)),
        (b"GIF89a\x10\x00\x10\x00", None),  # not read here: size unknown
    ],
)
def test_header_reader_on_short_and_odd_input(data: bytes, expected: tuple[int, int] | None) -> None:
    assert image_size(data) == expected


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: _patched_png(*BOMB_SIZE), "20000x20000"),
        (lambda: _zlib_bomb_png(8000, 8000), "8000x8000"),
        (lambda: _patched_jpeg(*BOMB_SIZE), "20000x20000"),
        (lambda: _patched_bmp(*BOMB_SIZE), "20000x20000"),
        (lambda: _patched_webp(16000, 16000), "16000x16000"),
        (lambda: _patched_png(60000, 1000), "60000x1000"),  # 60 MP: over the 50 MP default too
    ],
)
def test_bombs_are_skipped_on_the_header(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Callable[[], bytes], fragment: str
) -> None:
    """One line naming the file and the size; the folder goes on to the next image."""
    _write(tmp_path / "a_bomb.png", make())
    _write(tmp_path / "b_good.png", _encode(".png"))
    with open_source(str(tmp_path)) as source:
        first, second = source.read(), source.read()
        assert source.skipped == 1
    assert first is None and second is not None and second.name == "b_good.png"
    lines = [r.getMessage() for r in caplog.records if "a_bomb.png" in r.getMessage()]
    assert len(lines) == 1 and fragment in lines[0] and "max_pixels" in lines[0]


@pytest.mark.parametrize(("max_pixels", "decoded"), [(1, False), (851, True), (850, False), (10_000, True)])
def test_pixel_limit_is_configurable(tmp_path: Path, max_pixels: int, decoded: bool) -> None:
    """The 37x23 image has 851 pixels: the limit is inclusive and comes from the options."""
    path = _write(tmp_path / "img.png", _encode(".png"))
    source = ImageSource(str(path), [path], SourceOptions(max_pixels=max_pixels))
    assert (source.read() is not None) == decoded


def test_unknown_format_is_decoded_only_when_small(tmp_path: Path) -> None:
    """A header this module cannot read leaves the size unknown: only a small file is decoded."""
    big = _write(tmp_path / "big.png", b"GIF89a" + bytes(5 * 1024 * 1024))
    image, why = decode_image(big)
    assert image is None and "unreadable from its header" in why


@pytest.mark.parametrize(
    ("value", "raises"),
    [(1, False), (50_000_000, False), (MAX_IMAGE_PIXELS, False), (0, True), (-5, True), (MAX_IMAGE_PIXELS + 1, True)],
)
def test_max_pixels_config_bounds(value: int, raises: bool) -> None:
    if raises:
        with pytest.raises(ConfigError, match="max_pixels"):
            load_config(None, {"source": {"max_pixels": value}})
    else:
        assert load_config(None, {"source": {"max_pixels": value}}).source_options().max_pixels == value


def test_opencv_pixel_limit_is_set_before_cv2() -> None:
    """The second guard: OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, when cv2 loads."""
    assert int(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"]) <= MAX_IMAGE_PIXELS


# ------------------------------------------------------------------- path components > 255 bytes


@pytest.mark.parametrize(
    "make_uri",
    [
        lambda d: str(d / LONG_COMPONENT),
        lambda d: str(d / LONG_COMPONENT / "x.jpg"),
        lambda d: "file://" + str(d / (LONG_COMPONENT + ".mp4")),
        lambda d: str(d / LONG_COMPONENT / "*.jpg"),
        lambda d: str(d / "sub" / "*" / LONG_COMPONENT),
    ],
)
def test_long_source_path_is_one_line(tmp_path: Path, make_uri: Callable[[Path], str]) -> None:
    with pytest.raises(SourceError) as raised:
        open_source(make_uri(tmp_path))
    assert "\n" not in str(raised.value) and LONG_COMPONENT in str(raised.value)


@pytest.mark.parametrize(
    "spec",
    [
        "jsonl:{d}/" + LONG_COMPONENT + ".jsonl",
        "jsonl:{d}/" + LONG_COMPONENT + "/r.jsonl",
        "coco:{d}/" + LONG_COMPONENT + ".json",
        "video:{d}/" + LONG_COMPONENT + ".mp4",
        "video:{d}/" + LONG_COMPONENT,
        "images:{d}/" + LONG_COMPONENT + "/x",
    ],
)
def test_long_sink_path_is_one_line(tmp_path: Path, spec: str) -> None:
    with pytest.raises(SinkError) as raised:
        create_sink(spec.format(d=tmp_path))
    assert "\n" not in str(raised.value) and LONG_COMPONENT in str(raised.value)


@pytest.mark.parametrize("make_path", [lambda d: d / LONG_COMPONENT, lambda d: d / (LONG_COMPONENT + ".onnx")])
def test_long_model_path_is_one_line(tmp_path: Path, make_path: Callable[[Path], Path]) -> None:
    with pytest.raises(ModelError) as raised:
        load_model(make_path(tmp_path))
    assert "\n" not in str(raised.value) and "File name too long" in str(raised.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--model", "{d}/" + LONG_COMPONENT + ".onnx", "--source", "{d}"],
        ["run", "--model", str(DEMO_MODEL), "--source", "{d}/" + LONG_COMPONENT],
        ["run", "--model", str(DEMO_MODEL), "--source", "{d}", "--sink", "jsonl:{d}/" + LONG_COMPONENT],
        ["eval", "--model", "{d}/m.onnx", "--images", "{d}/" + LONG_COMPONENT, "--annotations", "{d}/a.json",
         "--out", "{d}/o.json"],
        ["eval", "--model", "{d}/m.onnx", "--images", "{d}", "--annotations", "{d}/" + LONG_COMPONENT,
         "--out", "{d}/o.json"],
    ],
)
def test_long_path_flags_end_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Through the CLI entry: exit code 2 and a single ``edgeseg:`` line, no traceback."""
    _write(tmp_path / "img.png", _encode(".png"))  # a readable source, so a later path is reached
    code = main([a.format(d=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("edgeseg: ") and LONG_COMPONENT in err


# --------------------------------------------------------------------------- numeric CLI flags


@pytest.mark.parametrize(
    ("argv", "flag", "ok"),
    [
        (["bench", "--frames", "-1"], "--frames", False),
        (["bench", "--frames", "0"], "--frames", False),
        (["bench", "--frames", "1"], "--frames", True),
        (["bench", "--frames", "2000000"], "--frames", False),
        (["bench", "--warmup", "-1"], "--warmup", False),
        (["bench", "--warmup", "0"], "--warmup", True),
        (["run", "--max-frames", "-1"], "--max-frames", False),
        (["run", "--max-frames", "0"], "--max-frames", True),
        (["run", "--conf", "nan"], "--conf", False),
        (["run", "--conf", "1.0"], "--conf", False),
        (["run", "--conf", "0.25"], "--conf", True),
        (["run", "--iou", "0"], "--iou", False),
        (["run", "--iou", "inf"], "--iou", False),
        (["run", "--imgsz", "330"], "--imgsz", False),
        (["run", "--imgsz", "640"], "--imgsz", True),
        (["eval", "--imgsz", "2048", "--images", "i", "--annotations", "a", "--out", "o"], "--imgsz", False),
        (["eval", "--max-det", "0", "--images", "i", "--annotations", "a", "--out", "o"], "--max-det", False),
        (["bench", "--threads", "-2"], "--threads", False),
        (["bench", "--threads", "x"], "--threads", False),
        (["run", "--inference-workers", "0"], "--inference-workers", False),
        (["run", "--inference-workers", "9"], "--inference-workers", False),
        (["run", "--inference-workers", "2"], "--inference-workers", True),
    ],
)
def test_numeric_flags_are_bounded(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str, ok: bool
) -> None:
    """Out of range: exit 2 with one ``edgeseg:`` line naming the flag, its field and the range."""
    parser = build_parser()
    if ok:
        parser.parse_args(argv)
        return
    with pytest.raises(SystemExit) as raised:
        parser.parse_args(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("edgeseg: ")
    assert f"argument {flag}" in err and "expected" in err
