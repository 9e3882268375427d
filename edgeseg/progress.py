"""Progress bars for long runs: tqdm on stderr, silent when stderr is not a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(total: int | None, desc: str) -> Iterator[tqdm]:
    """A tqdm bar of ``total`` steps (unknown when None), closed on exit."""
    bar = tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, disable=None, leave=False)
    try:
        yield bar
    finally:
        bar.close()
