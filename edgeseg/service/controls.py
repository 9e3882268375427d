"""The dashboard's controls, applied to the running daemon through its ``Session``.

Thresholds and NMS mode change the settings as the user set them; the Session derives what the
processor runs from them and the picker's effort level (read once per frame, so the next frame
uses them). A fixed resolution pins the processor to that rung of the model ladder and suspends
the picker; "auto" hands control back to it. These controls hold no state of their own and never
touch the processor: the Session is the one owner (see ``edgeseg.service.session``).

A source switch is checked before it is answered: the URI is refused at the door when it is not
text that can be opened (``check_source``), then the source is test-opened until it gives a
first frame, within SOURCE_TEST_TIMEOUT_S, in a thread of its own (a network stream that hangs
in OpenCV cannot hang the answer). Only then is it a reload with the new URI laid over the
config (the daemon's ``switch_source`` callback), through the same checks as SIGHUP; a reload
that still fails restores the overrides from before the switch, so a refused source is never
laid over a later reload. A file or folder (a finite source) is switched to looping: the daemon is a service, and
a clip chosen on the dashboard plays until the next switch instead of ending the daemon with it.
"""

from __future__ import annotations

import threading
import time
import typing
from dataclasses import replace
from typing import Any, Final, List

from edgeseg.dashboard.controls import check_source
from edgeseg.errors import SourceError
from edgeseg.postprocess.settings import NmsMethod
from edgeseg.service.session import Session
from edgeseg.sources import open_source
from edgeseg.sources.base import SourceOptions
from edgeseg.sources.uri import mask_credentials

SOURCE_TEST_TIMEOUT_S: Final = 10.0
"""Longest a source switch waits for the new source's first frame before refusing it."""
SOURCE_TEST_CONNECT_S: Final = 5.0
"""Connect and read timeouts of a test-opened network stream (within SOURCE_TEST_TIMEOUT_S)."""


def probe_source(uri: str, options: SourceOptions, timeout: float = SOURCE_TEST_TIMEOUT_S) -> bool:
    """Open ``uri`` and read its first frame within ``timeout``; whether it is finite (file, folder).

    Raises ``SourceError`` with one line (credentials masked) when it does not open, fails, ends
    before a frame, or gives none in time. The source is opened and read in a daemon thread, so
    that a call into OpenCV that blocks longer than it should still leaves this call on time;
    such a thread closes its source once OpenCV returns.
    """
    safe = mask_credentials(uri)
    outcome: List[Any] = []  # [finite] or [exception], set by the thread
    done = threading.Event()
    abandoned = threading.Event()

    def attempt() -> None:
        source = None
        try:
            source = open_source(uri, options)
            deadline = time.monotonic() + timeout
            while not abandoned.is_set():
                rest = deadline - time.monotonic()
                if rest <= 0:
                    raise SourceError(f"{safe}: no frame within {timeout:g} s")
                if source.read(timeout=min(rest, 0.5)) is not None:
                    outcome.append(not source.live)
                    return
                if source.exhausted:
                    raise SourceError(f"{safe}: ended before its first frame")
        except Exception as exc:  # any failure to open is a refusal, reported as one line
            outcome.append(exc)
        finally:
            if source is not None:
                try:
                    source.close()
                except Exception:  # closing a test source must not change the answer
                    pass
            done.set()

    threading.Thread(target=attempt, name="edgeseg-source-test", daemon=True).start()
    if not done.wait(timeout + 1.0):
        abandoned.set()
        raise SourceError(f"{safe}: did not open within {timeout:g} s")
    result = outcome[0] if outcome else SourceError(f"{safe}: did not open")
    if isinstance(result, BaseException):
        text = str(result).strip()
        line = text.splitlines()[0] if text else type(result).__name__
        raise SourceError(mask_credentials(line if safe in mask_credentials(line) else f"{safe}: {line}"))
    return bool(result)


SwitchSource = typing.Callable[[str, bool], None]  # evaluated at import: 3.8's form
"""Reloads with a new source URI; ``loop``: restart a finite one at its end (``Daemon.switch_source``)."""


class DaemonControls:
    """``edgeseg.dashboard.controls.Controls`` over the daemon's ``Session``.

    Settings, resolution and pause are changes of the Session, the one owner of the running
    state; the state shown is its ``view``. A source switch, once test-opened, is a reload,
    which the daemon does: ``switch_source(uri, loop)``.
    """

    def __init__(self, session: Session, switch_source: SwitchSource):
        self._session = session
        self._switch_source = switch_source

    def set_conf_threshold(self, value: float) -> None:
        self._session.change_settings(conf_threshold=value)

    def set_nms(self, method: NmsMethod) -> None:
        self._session.change_settings(nms=method)

    def set_resolution(self, size: int | None) -> None:
        self._session.set_resolution(size)

    def set_source(self, uri: str) -> None:
        """Switch to ``uri`` once it has given a frame; ``ValueError``/``SourceError`` otherwise.

        The running source is left alone on a refusal. The URI of the running source itself is
        not test-opened (a camera opens once) and not reloaded.
        """
        uri = check_source(uri)
        config = self._session.config()
        if uri == (config.source.uri or ""):
            return
        options = replace(config.source_options(), loop=False,
                          open_timeout_s=SOURCE_TEST_CONNECT_S, read_timeout_s=SOURCE_TEST_CONNECT_S)
        finite = probe_source(uri, options, SOURCE_TEST_TIMEOUT_S)
        self._switch_source(uri, finite)

    def set_paused(self, paused: bool) -> None:
        self._session.set_paused(paused)

    def resolutions(self) -> list[int]:
        try:
            return self._session.resolutions()
        except Exception:  # a model without a ladder still gets the rest of the page
            return []

    def state(self) -> dict[str, Any]:
        view = self._session.view()
        if view is None:
            return {}
        return {
            "conf_threshold": view.settings.conf_threshold,
            "nms": view.settings.nms,
            "resolution": "auto" if view.fixed_size is None else view.fixed_size,
            "source": mask_credentials(view.source),
            "paused": view.paused,
            "resolutions": self.resolutions(),
        }
