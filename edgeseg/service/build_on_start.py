"""``engines.build_on_start``: serve at once on ONNX Runtime, build the TensorRT plans meanwhile.

A freshly flashed bundle carries ONNX files; its TensorRT plans must be built on the device
(minutes on an Orin Nano). With ``build_on_start`` the daemon does not wait: it serves from the
bundle's ONNX Runtime engine, builds the plans in a background thread (``edgeseg engines build``'s
code, ``edgeseg.flash.build``) and, once any plan is built, asks for a reload, the same path as
SIGHUP, which loads the bundle again and now picks the plan (after its self-test). A build that
fails is logged in one line and the ONNX Runtime service keeps running.

The build thread touches nothing of the running pipeline: it writes the bundle's ``device/``
overlay (replaced whole) and calls ``on_built``. It cannot be cancelled (TensorRT's build is one
call); a daemon stopped meanwhile leaves at most a staging folder, removed by the next build.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from edgeseg.bundle.device import DeviceInfo, probe_device
from edgeseg.config.engines import EnginesConfig
from edgeseg.flash.build import BuildReport, build_for_service, one_line

if TYPE_CHECKING:
    from edgeseg.config import Config
    from edgeseg.model import Model

log = logging.getLogger("edgeseg.serve")

#: Builds the plans of the bundle at a path as the configuration says (the seam tests replace).
ServiceBuild = Callable[[Path, EnginesConfig], BuildReport]
DeviceProbe = Callable[[], DeviceInfo]


def build_decision(enabled: bool, model: Model, device: DeviceInfo) -> Tuple[bool, str]:
    """(start a background build, why) for the model the daemon has just loaded."""
    if not enabled:
        return False, ""
    if model.bundle is None or model.engine is None:
        return False, "build_on_start: model.path is an ONNX file, not an engine bundle: nothing to build"
    if model.engine.runtime == "tensorrt":
        return False, f"build_on_start: serving the TensorRT plan {model.engine.file}: nothing to build"
    if device.tensorrt is None:
        return False, f"build_on_start: TensorRT is not installed: bundle {model.bundle.name} serves on ONNX Runtime"
    return True, (f"build_on_start: no TensorRT plan of bundle {model.bundle.name} runs here: serving "
                  f"{model.engine.file} on ONNX Runtime while the plans build in the background")


def _build_here(bundle_dir: Path, engines: EnginesConfig) -> BuildReport:
    """The real build: this device, its JetPack, TensorRT (imported by the builder)."""
    from edgeseg.platform.host import Host  # noqa: PLC0415
    from edgeseg.platform.jetson import read_platform  # noqa: PLC0415

    return build_for_service(bundle_dir, probe_device(), read_platform(Host()).problem(), engines.build_precisions,
                             workspace_mib=engines.build_workspace_mib)


class BuildOnStart:
    """Starts at most one background build at a time for the daemon.

    Args:
        build: builds a bundle's plans (default: on this device with TensorRT).
        probe: what this device runs (default: ``probe_device``).
    """

    def __init__(self, build: Optional[ServiceBuild] = None, probe: DeviceProbe = probe_device) -> None:
        self._build = build or _build_here
        self._probe = probe
        self._lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, config: Config, model: Model, on_built: Callable[[], None]) -> Optional[threading.Thread]:
        """Start a build when the configuration asks and the model is a bundle's ONNX Runtime engine."""
        start, why = build_decision(config.engines.build_on_start, model, self._probe())
        if why:
            log.info("%s", why)
        if not start or not config.model.path:
            return None
        with self._lock:
            if self.running:
                log.info("build_on_start: a build is already running")
                return None
            bundle = Path(config.model.path).resolve()
            self.thread = threading.Thread(target=self._run, args=(bundle, config.engines, on_built),
                                           name="edgeseg-plan-build", daemon=True)
            self.thread.start()
            return self.thread

    def _run(self, bundle: Path, engines: EnginesConfig, on_built: Callable[[], None]) -> None:
        try:
            report = self._build(bundle, engines)
        except Exception as exc:  # noqa: BLE001 - refusals and TensorRT's errors alike: one line, keep serving
            log.error("build_on_start: no plans built for %s: %s; serving on ONNX Runtime", bundle, one_line(exc))
            return
        for line in report.failed:
            log.error("build_on_start: %s", line)
        if report.built:
            log.info("build_on_start: %s; reloading onto them", report.summary())
            on_built()
        else:
            log.info("build_on_start: %s; serving on ONNX Runtime", report.summary())
