"""One exception type per area of the runtime.

Every error carries a message that names the file, field or URI involved and what was
expected, so that the CLI can print it as a single line (``edgeseg: <message>``) and exit
with a non-zero code instead of a traceback.
"""

from __future__ import annotations


class EdgesegError(Exception):
    """Base of all errors the CLI reports as one line."""

    exit_code: int = 2


class ConfigError(EdgesegError):
    """A configuration file, field or command-line value is invalid."""


class SourceError(EdgesegError):
    """A source URI cannot be opened or read (raised by ``Source.read`` on failure)."""


class ModelError(EdgesegError):
    """A model file is missing, corrupt, or does not follow a supported output layout."""


class SinkError(EdgesegError):
    """A sink specification is unknown or a sink cannot write its output."""


class EvalError(EdgesegError):
    """An evaluation input (images, annotations) is missing or inconsistent."""


class BundleError(EdgesegError):
    """An engine bundle is malformed, tampered with, or not compatible with this device."""


class ExportError(EdgesegError):
    """An export input (model, calibration images, options) is unusable, or a build failed."""

    @classmethod
    def missing_dependency(cls, command: str, exc: ImportError) -> ExportError:
        """The one-line error of an export command run without the ``export`` extra installed."""
        if exc.name == "export":  # the export stage refused this interpreter and said why
            return cls(f"{command}: {exc}")
        return cls(f"{command} needs the export stage's dependencies ({exc.name} is missing): "
                   "pip install 'edgeseg[export]'")
