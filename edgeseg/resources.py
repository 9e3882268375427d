"""A base for things that hold a device, file or stream open: ``close()`` plus ``with`` support."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

_Self = TypeVar("_Self", bound="Closeable")


class Closeable:
    """``with obj:`` closes ``obj`` on the way out; subclasses override ``close`` (idempotent)."""

    def close(self) -> None:
        """Release what is held. The default holds nothing."""

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
