"""Reading a COCO instances json (ground truth) with one-line refusals: ``eval`` and ``eval-tracks``.

Both commands take a file a person names on the command line; what can be wrong with it (absent,
not a file, not JSON, not an object, a section that is not a list) is said in one line naming
the file and the field, before anything else is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from edgeseg.errors import EvalError
from edgeseg.sources.fsnames import is_file_or_raise, printable_name

SECTIONS = ("images", "annotations", "categories")


def read_coco_json(path: Path, what: str, expected: str = "a COCO instances file") -> Dict[str, Any]:
    """The document at ``path``, checked to be an object with list ``images``, ``annotations`` and
    ``categories``. ``what`` names the file in messages ("annotations", "truth"); ``expected``
    says what it should have been."""
    name = printable_name(str(path))
    if not is_file_or_raise(path, EvalError, f"{what} file"):
        raise EvalError(f"{what} file not found: {name}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalError(f"{what} {name}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise EvalError(f"{what} {name}: expected {expected} (a JSON object), found {type(doc).__name__}")
    missing = [k for k in SECTIONS if not isinstance(doc.get(k), list)]
    if missing:
        raise EvalError(f"{what} {name}: field '{missing[0]}': expected a list ({expected})")
    return doc
