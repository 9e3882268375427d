"""File names as the file system has them, made safe for OpenCV, messages and JSON.

On Linux a file name is bytes. Python decodes a byte that is not UTF-8 (``caf\\xe9.jpg``, written
by a Latin-1 camera or a Windows share) into a lone surrogate (``'caf\\udce9.jpg'``). Such a string
is fine for Python's own file functions, which encode it back to the same bytes, but:

* OpenCV's bindings convert it to ``std::string`` without checking, and crash the process
  (SIGSEGV in ``imread``, ``imwrite``, ``VideoCapture``, ``VideoWriter``; OpenCV 4.11 and 5.x);
  a daemon must never die of a file name;
* ``json.dumps`` writes it as ``"\\udce9"``, an unpaired surrogate that strict JSON parsers
  (Go, Rust serde, browsers' TextDecoder with ``fatal``) refuse, and ``ensure_ascii=False`` cannot
  encode it at all.

So every path reaches OpenCV through :func:`opencv_path` (images are read through bytes instead,
so any name works), and every name reaches JSON or a message through :func:`printable_name`,
which shows each undecodable byte as ``\\xNN``: valid UTF-8, readable, and still telling the
user which byte it was. Long names and other ``OSError`` from the file system become one line
through :func:`os_error_text`.
"""

from __future__ import annotations

import os
import stat
from typing import Union

#: What a path argument may be here.
PathLike = Union[str, "os.PathLike[str]"]
#: The encoding OpenCV's bindings assume for every ``std::string`` path.
OPENCV_PATH_ENCODING = "utf-8"


def printable_name(text: str) -> str:
    """``text`` as valid UTF-8 text: each undecodable file-name byte written as ``\\xNN``.

    A name without lone surrogates comes back unchanged. Bytes that came from the file system
    (surrogates U+DC80..U+DCFF) are shown as the byte they stand for; any other lone surrogate
    (from JSON or a YAML escape) is shown as ``\\uXXXX``. Either way the result encodes to UTF-8,
    so strict JSON parsers accept it.
    """
    try:
        text.encode(OPENCV_PATH_ENCODING)
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode(OPENCV_PATH_ENCODING, "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode(OPENCV_PATH_ENCODING, "backslashreplace").decode(OPENCV_PATH_ENCODING)
    return raw.decode(OPENCV_PATH_ENCODING, "backslashreplace")


def opencv_name_problem(path: PathLike) -> str | None:
    """Why OpenCV must not be given ``path`` (a one-line reason naming it), or None when it can.

    Refused: names that are not valid UTF-8 (the crash above) and names holding a NUL byte, which
    OpenCV would silently cut short and so open another file.
    """
    text = os.fspath(path)
    try:
        text.encode(OPENCV_PATH_ENCODING)
    except UnicodeEncodeError:
        return (
            f"{printable_name(text)}: expected a UTF-8 file name, found bytes that are not UTF-8 "
            f"(shown as \\xNN); OpenCV cannot open such a name, rename the file"
        )
    if "\x00" in text:
        return f"{text!r}: expected a file name without NUL bytes"
    return None


def opencv_path(path: PathLike, error: type[Exception]) -> str:
    """``path`` as the string to give OpenCV; raises ``error`` with the reason when it must not be.

    ``error`` is the area's exception (``SourceError`` for captures, ``SinkError`` for writers).
    """
    problem = opencv_name_problem(path)
    if problem is not None:
        raise error(problem)
    return os.fspath(path)


def os_error_text(exc: OSError | ValueError | RuntimeError) -> str:
    """A short reason for a failed file-system call: ``strerror`` without the repeated path.

    ``OSError`` repeats the (maybe 4 KB long) path in ``str(exc)``; the caller names the path
    itself. ``ValueError`` is what ``os.stat`` raises for a NUL byte, ``RuntimeError`` what
    ``Path.expanduser`` raises for an unknown ``~user``.
    """
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return printable_name(str(exc))


def is_file_or_false(path: PathLike) -> bool:
    """``os.path.isfile``: False, not an exception, for a name the file system refuses to look up.

    For names listed from elsewhere (an annotation file, a folder): one bad name must not end
    the run. ``os.path.isfile`` already swallows ``OSError`` and ``ValueError`` on every Python
    edgeseg supports, unlike ``Path.is_file`` (ENAMETOOLONG raises there).
    """
    return os.path.isfile(path)



def _mode_or_raise(path: PathLike, error: type[Exception], what: str) -> int | None:
    """``st_mode`` of ``path``, None when it does not exist; any other failure of the lookup (a
    name component over 255 bytes, EACCES, a NUL byte) raised as ``error``, one line naming
    ``what`` and the path, where ``Path.is_dir`` would raise a bare ``OSError``."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise error(f"{what} {printable_name(os.fspath(path))}: cannot look it up ({os_error_text(exc)})") from None


def is_dir_or_raise(path: PathLike, error: type[Exception], what: str) -> bool:
    """True for an existing directory, False when absent or another kind; see ``_mode_or_raise``."""
    mode = _mode_or_raise(path, error, what)
    return mode is not None and stat.S_ISDIR(mode)


def is_file_or_raise(path: PathLike, error: type[Exception], what: str) -> bool:
    """True for an existing regular file, False when absent or another kind; see ``_mode_or_raise``."""
    mode = _mode_or_raise(path, error, what)
    return mode is not None and stat.S_ISREG(mode)
