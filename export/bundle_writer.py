"""Writes a bundle so that it either exists whole or not at all.

Files go into a staging directory beside the destination; only when every engine is built and
the manifest written does the staging directory replace the destination, by rename. A build that
fails or is interrupted leaves the previous bundle (if any) untouched and no half-written one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from edgeseg.bundle.manifest import MANIFEST_NAME, Manifest
from edgeseg.bundle.verify import sha256_file
from edgeseg.errors import ExportError

log = logging.getLogger(__name__)


class BundleWriter:
    """A staging directory for one bundle; ``commit`` publishes it, leaving it discards it."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ExportError(f"output {self.out}: exists and is not a directory")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-", dir=self.out.parent))
        except OSError as exc:
            raise ExportError(f"output {self.out}: cannot create ({exc.strerror})") from None
        self._committed = False

    def path(self, name: str) -> Path:
        """Where a file of the bundle is written while staging (its folder made, e.g. selftest/)."""
        p = self.staging / name
        if p.parent != self.staging:
            p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write(self, name: str, data: bytes) -> tuple[str, int]:
        """Stage one file; its sha256 and size, for the manifest."""
        self.path(name).write_bytes(data)
        return self.describe(name)

    def describe(self, name: str) -> tuple[str, int]:
        """sha256 and size of a staged file, for its manifest record."""
        p = self.path(name)
        return sha256_file(p), p.stat().st_size

    def commit(self, manifest: Manifest) -> Path:
        """Write the manifest and move the bundle into place (replacing an older one)."""
        (self.staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        for f in sorted(self.staging.rglob("*")):  # files in sub-folders (selftest/) too
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        self.staging.chmod(0o755)  # mkdtemp made it 0700; the daemon may run as another user
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            self.out.rename(old)
        self.staging.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._committed = True
        return self.out

    def discard(self) -> None:
        if not self._committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.discard()
