"""The allocator policy set at start (edgeseg/platform/allocator.py)."""

from __future__ import annotations

import sys

import pytest

from edgeseg.platform import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_the_mmap_threshold_is_pinned_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert allocator.pin_mmap_threshold() is True


def test_a_threshold_the_user_set_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert allocator.pin_mmap_threshold() is False


def test_without_glibc_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)

    def no_libc(*_args: object, **_kwargs: object) -> object:
        raise OSError("no libc here")

    monkeypatch.setattr(allocator.ctypes, "CDLL", no_libc)
    assert allocator.pin_mmap_threshold() is False
