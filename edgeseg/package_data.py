"""Files shipped inside the package (the JSON schemas, the dashboard's page), read as text.

``pkgutil.get_data`` rather than ``importlib.resources.files``: the latter is Python 3.9+, and the
runtime runs on JetPack 5's Python 3.8. ``get_data`` works for installed, editable and zipped
packages alike.
"""

from __future__ import annotations

import pkgutil


def package_text(package: str, resource: str) -> str:
    """The UTF-8 text of ``resource`` (a '/'-separated path) inside ``package``."""
    data = pkgutil.get_data(package, resource)
    if data is None:  # a loader that cannot read data files; never the case for a normal install
        raise FileNotFoundError(f"{package}: cannot read the packaged file {resource}")
    return data.decode("utf-8")
