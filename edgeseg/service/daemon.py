"""``edgeseg serve``: the pipeline as a long-running systemd service.

    start ─► load config ─► open persistent outputs (dashboard, MQTT) ─► build runtime ─► READY=1
      loop every tick: watchdog (only while no stage is stalled) · STATUS= and stats every N s
      SIGHUP  ─► RELOADING=1 ─► new config read, its changes planned (a restart-only field refuses)
              ─► new model opened ─► outputs prepared (token, socket, publisher) ─► old pipeline
              drained ─► new one started ─► outputs committed ─► READY=1
      SIGTERM ─► STOPPING=1 ─► capture stops, frames in flight finished and flushed ─► exit 0
      engines.build_on_start, serving a bundle's ONNX Runtime engine where TensorRT is installed:
              TensorRT plans built in a background thread ─► reload (as SIGHUP) onto them

What runs is one generation (config, runtime, pipeline, picker), built by the same assembly as
``edgeseg run`` (``edgeseg.app.build_runtime``, with the model already loaded and checked and
file sinks appending) and held by the ``Session`` (``edgeseg.service.session``), the one owner
of the running state: the daemon begins and ends generations there, the dashboard's controls
and the adaptive picker change settings, resolution and effort only through it.

A reload applies everything it reads (``edgeseg.service.reload_plan`` classifies every field;
``edgeseg.service.outputs`` applies the dashboard and MQTT sections in two phases) or refuses
whole: one that fails (bad config, a restart-only field, a port taken, an unreadable token file,
a refused bundle, camera gone) keeps or restores the running configuration and says why. An
unchanged ``mqtt:`` section keeps its broker session across reloads, so subscribers never see
the device go offline for a reload. The daemon never exits on a dropped camera or broker: live
sources reconnect and MQTT queues on disk. It exits non-zero only on a fatal pipeline error,
which is systemd's cue to restart it.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time
import typing
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from edgeseg.adaptive.controller import AdaptiveController, open_adaptive
from edgeseg.app import OpenedCamera, build_pipeline, build_runtime, camera_lane, load_options, open_camera, open_model
from edgeseg.bundle.selftest import LEDGER
from edgeseg.config import Config, load_config
from edgeseg.errors import EdgesegError, SinkError
from edgeseg.model import Model
from edgeseg.monitor.metrics import StageHistograms, render_metrics
from edgeseg.monitor.telemetry import Telemetry
from edgeseg.pipeline.cameras import CameraStats
from edgeseg.pipeline.runner import announce_status
from edgeseg.service.build_on_start import BuildOnStart
from edgeseg.service.camera_reload import CameraChange, camera_change
from edgeseg.service.controls import DaemonControls
from edgeseg.service.logs import configure_service_logging
from edgeseg.service.notify import Notifier, watchdog_interval_s
from edgeseg.service.outputs import PersistentOutputs
from edgeseg.service.reload_plan import Apply, plan_reload
from edgeseg.service.session import Generation, Session
from edgeseg.service.stats import snapshot, status_line
from edgeseg.sinks import sink_kind
from edgeseg.sinks.base import Sink
from edgeseg.sinks.coco import SERVE_REFUSAL as COCO_SERVE_REFUSAL
from edgeseg.sources.uri import mask_credentials

log = logging.getLogger("edgeseg.serve")

#: The main loop's period: watchdog, signals and stats are handled at this granularity.
TICK_S = 0.5
#: Exit codes: 0 after a requested stop or a finite source's end, 1 after a fatal pipeline error.
EXIT_OK, EXIT_FAILED = 0, 1
#: Taking the pid file's lock: tries and the pause between them (about a second in all).
PID_LOCK_TRIES, PID_LOCK_RETRY_S = 20, 0.05

ExtraSinks = typing.Callable[[Config], typing.List[Sink]]  # evaluated at import: 3.8's form


def check_serve_sinks(config: Config) -> None:
    """Refuse ``coco:`` outputs under ``serve`` in one line (see ``edgeseg.sinks.coco``)."""
    for field, spec in config.sink_specs():
        if sink_kind(spec) == "coco":
            raise SinkError(f"{field} {mask_credentials(spec)!r}: refused under serve: {COCO_SERVE_REFUSAL}")


class Daemon:
    """Runs the configured pipeline until SIGTERM, reloading on SIGHUP.

    Args:
        config_path: the YAML file re-read on every reload.
        overrides: command-line values laid over the file, on start and on every reload.
        extra_sinks: opens further sinks that outlive reloads, fed after the dashboard and MQTT
            (tests use it for a sink that measures or slows the pipeline).
        build_on_start: builds a bundle's TensorRT plans in the background (``engines.build_on_start``).
    """

    def __init__(
        self,
        config_path: str | None,
        overrides: Mapping[str, Any] | None = None,
        extra_sinks: ExtraSinks | None = None,
        notifier: Notifier | None = None,
        build_on_start: BuildOnStart | None = None,
    ):
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self._extra_factory = extra_sinks
        self.notifier = notifier or Notifier()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._extra: list[Sink] = []
        self.session = Session()  # what runs now, and the one writer of its settings
        self._started = time.monotonic()
        self._last_stats = 0.0
        self.reloads = 0
        self._before_switch: dict[str, Any] | None = None  # overrides to restore if a switch fails
        # The pid file, locked while this process runs (engines activate signals only its holder),
        # and the count of reload attempts its verdicts name.
        self._pid_file: Path | None = None
        self._pid_fd: int | None = None
        self._reload_attempts = 0
        self.controls = DaemonControls(self.session, self.switch_source)
        # The dashboard and the MQTT publisher: they outlive generations, and reloads apply their
        # sections in two phases (prepare before anything running is touched, commit after).
        self.outputs = PersistentOutputs(self.controls, self.stats, metrics=self.metrics,
                                         switches=self._switches, system=self._system, cameras=self.cameras)
        self.telemetry: Telemetry | None = None
        self.build_on_start = build_on_start or BuildOnStart()

    def switch_source(self, uri: str, loop: bool = False) -> None:
        """Reload with ``uri`` as the source (the dashboard's switch, test-opened by DaemonControls).

        It stays until restart once the reload succeeds; a reload that is refused or fails puts
        back the overrides from before the switch, so a failed switch is never laid over later
        reloads. ``loop``: restart a finite source (file, folder) when it ends, so that it does
        not end the daemon.
        """
        if not uri.strip():
            raise ValueError("source: expected a URI")
        if self._before_switch is None:
            self._before_switch = copy.deepcopy(self.overrides)
        source = {k: v for k, v in dict(self.overrides.get("source") or {}).items() if k != "loop"}
        source["uri"] = uri.strip()
        if loop:
            source["loop"] = True
        self.overrides = {**self.overrides, "source": source}  # one assignment: a reload reads either
        self._reload.set()

    # -- signals ------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self._stop.is_set():
            log.info("%s: stopping after the frames in flight", signal.Signals(signum).name)
        self._stop.set()

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload.set()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    # -- lifecycle ----------------------------------------------------------------------------

    def _load_config(self) -> Config:
        """The config re-read for start or reload, refused (before anything running is stopped)
        when it names an output a daemon cannot keep bounded."""
        config = load_config(self.config_path, self.overrides)
        check_serve_sinks(config)
        return config

    def _start(self, config: Config, model: Model | None = None) -> Generation:
        """Build a generation of ``config`` (with ``model``, already loaded from it, when given),
        make it the Session's and start its pipeline."""
        runtime = build_runtime(config, model=model, append=True)  # owns the model from here
        controller: AdaptiveController | None = None
        try:
            if config.adaptive.enabled:
                controller = open_adaptive(config.adaptive, config.model.path or "", runtime.model,
                                           runtime.processor, load_options(config), owner=self.session)
            sinks = [*runtime.sinks, *self.outputs.sinks, *self._extra]
            pipeline = build_pipeline(config, runtime, sinks=sinks, on_result=self.session.observe)
        except Exception:
            if controller is not None:
                controller.close()
            runtime.close()
            raise
        if controller is not None:
            controller.attach(pipeline)
        generation = Generation(config, runtime, pipeline, StageHistograms(), controller)
        self.session.begin(generation)
        pipeline.start()
        return generation

    def _stop_active(self, reloading: bool = False) -> None:
        """Drain and close the running generation. ``reloading``: a new one follows over (mostly)
        the same cameras, so their status is not announced offline (see ``_announce_removed``)."""
        generation = self.session.generation
        if generation is None:
            return
        generation.pipeline.stop(announce_offline=not reloading)
        try:
            while not generation.pipeline.join(TICK_S):
                self._tick_watchdog()
        except Exception as exc:  # a stage's failure, re-raised by join: report it, still clean up
            log.error("pipeline ended with: %s", exc)
        finally:
            self.session.end()
            generation.close()

    def _do_reload(self) -> None:
        """Switch to the re-read config: all of it or none of it.

        Everything that can be refused is checked while the old pipeline still runs: the config,
        its plan (a field only a restart can change refuses the reload), the model, and the
        outputs' prepare (token read, a new port bound, a new publisher built). Then the old
        pipeline is drained, the new one started, and only then the outputs committed; when the
        new pipeline cannot start, the prepared outputs are released and the old configuration
        started again, so nothing of a failed reload stays applied.
        """
        self.notifier.reloading()
        running = self.session.generation
        assert running is not None
        old = running.config
        before_switch, self._before_switch = self._before_switch, None
        self._reload_attempts += 1
        model: Model | None = None
        try:
            new = self._load_config()
            plan = plan_reload(old, new)
            plan.check()
            change = camera_change(old, new)
            if change is not None and before_switch is None:
                self._change_cameras(running, new, change)
                return
            model = open_model(new)  # the bundle behind model.path may have been re-flashed
            prepared = self.outputs.prepare(new, model.spec.class_names)
        except EdgesegError as exc:
            if model is not None:
                model.close()
            log.error("reload refused, keeping the running configuration: %s", exc)
            if before_switch is not None:  # a refused source switch is not laid over later reloads
                self.overrides = before_switch
            self._verdict(False, f"reload refused: {exc}")
            self.notifier.ready(status_line(self.stats()))
            return
        self._stop_active(reloading=True)
        try:
            self._start(new, model)
        except EdgesegError as exc:
            log.error("reload failed (%s); restoring the previous configuration", exc)
            self.outputs.abort(prepared)
            if before_switch is not None:
                self.overrides = before_switch
            self._verdict(False, f"reload failed: {exc}")
            self._start(old)
            self.notifier.ready(status_line(self.stats()))
            return
        self.outputs.commit(prepared)
        self._announce_removed(old, new)
        if plan.touches(Apply.LOGGING):
            configure_service_logging(new.log_level, new.service.log_format)
        self.reloads += 1
        log.info("reloaded: model %s, cameras %s; %s", model.spec.name,
                 ", ".join(c.name for c in new.camera_specs()), plan.describe())
        self.build_on_start.start(new, model, self.request_reload)  # a newly activated bundle's plans
        self._verdict(True, f"reloaded: model {model.spec.name}")
        self.notifier.ready(status_line(self.stats()))

    def _change_cameras(self, running: Generation, new: Config, change: CameraChange) -> None:
        """Add and remove cameras in the running pipeline (the only change of this reload): the
        other cameras go on untouched, and so do the outputs and the MQTT session. The new
        cameras are opened first; one that cannot be opened refuses the reload whole."""
        prepared = self.outputs.prepare(new, running.runtime.model.spec.class_names)
        opened: list[OpenedCamera] = []
        try:
            for spec in change.added:
                opened.append(open_camera(new, spec, running.runtime.model, append=True, fixed=running.runtime.fixed))
        except EdgesegError:
            self.outputs.abort(prepared)
            for camera in opened:
                camera.close()
            raise
        for name in change.removed:
            if not running.pipeline.remove_camera(name, timeout=running.config.service.stall_s):
                log.warning("camera %s: still finishing after %.0f s; removed from the list anyway",
                            name, running.config.service.stall_s)
            running.runtime.drop_camera(name)
        for camera in opened:
            running.runtime.add_camera(camera)
            running.pipeline.add_camera(camera_lane(camera))
        if running.controller is not None:
            running.controller.set_cameras(len(running.pipeline.camera_names()))
        self.session.adopt_config(new)
        self.outputs.commit(prepared)  # the dashboard's cameras and zones; MQTT's session stays
        self.reloads += 1
        log.info("reloaded: %s (the other cameras ran on)", change.describe())
        self._verdict(True, f"reloaded: {change.describe()}")
        self.notifier.ready(status_line(self.stats()))

    def _announce_removed(self, old: Config, new: Config) -> None:
        """Cameras the reload dropped go offline (the drained pipeline did not say so)."""
        kept = {spec.name for spec in new.camera_specs()}
        for spec in old.camera_specs():
            if spec.name not in kept:
                announce_status(self.outputs.sinks, spec.name, False)

    def cameras(self) -> list[CameraStats]:
        """Every camera of the running pipeline (the dashboard's ``/api/cameras``)."""
        active = self.session.generation
        return [] if active is None else active.pipeline.cameras()

    def stats(self) -> dict[str, Any]:
        active = self.session.generation
        if active is None:
            return {}
        extra: dict[str, Any] = {"reloads": self.reloads, "paused": active.pipeline.paused}
        mqtt = self.outputs.mqtt_status()
        if mqtt is not None:
            extra["mqtt"] = mqtt
        if active.controller is not None:
            extra["adaptive"] = active.controller.snapshot()
        if self.telemetry is not None:
            extra["system"] = self.telemetry.snapshot().as_dict()
        # The processor's model is the one running now (the picker may have switched it).
        return snapshot(active.pipeline, active.runtime.processor.model, self._started, extra)

    def metrics(self) -> str:
        """The Prometheus page for /metrics."""
        active = self.session.generation
        if active is None:
            # Between a refused load and the next one the self-test counts matter most: show them.
            return render_metrics(telemetry=self.telemetry.snapshot() if self.telemetry else None,
                                  selftest=LEDGER.counts())
        return render_metrics(active.pipeline, model=active.runtime.processor.model, histograms=active.histograms,
                              adaptive=active.controller,
                              telemetry=self.telemetry.snapshot() if self.telemetry else None)

    def _switches(self) -> list[dict[str, Any]]:
        active = self.session.generation
        if active is None or active.controller is None:
            return []
        return [s.as_dict() for s in active.controller.history()]

    def _system(self) -> dict[str, Any]:
        return self.telemetry.snapshot().as_dict() if self.telemetry is not None else {}

    def _tick_watchdog(self) -> None:
        active = self.session.generation
        if active is None:
            return
        stall_s = active.config.service.stall_s
        for name in active.pipeline.stalled_cameras(stall_s):  # a hung capture: that camera alone
            active.pipeline.restart_camera(name)
        stalled = active.pipeline.stalled(stall_s)
        if stalled:
            log.error("no progress in %s for over %.0f s: withholding the watchdog ping",
                      ", ".join(stalled), active.config.service.stall_s)
            return
        self.notifier.watchdog()

    def _tick_stats(self) -> None:
        active = self.session.generation
        assert active is not None
        now = time.monotonic()
        if now - self._last_stats < active.config.service.stats_interval_s:
            return
        self._last_stats = now
        stats = self.stats()
        line = status_line(stats)
        self.notifier.status(line)
        log.info("%s", line)
        self.outputs.publish_stats(stats)

    def _verdict(self, ok: bool, message: str) -> None:
        """This reload's outcome beside the pid file: ``engines activate`` waits for it."""
        if self._pid_file is None:
            return
        from edgeseg.flash.daemon import write_verdict

        try:
            write_verdict(self._pid_file, self._reload_attempts, ok, message)
        except OSError as exc:
            log.warning("cannot write the reload verdict beside %s (%s)", self._pid_file, exc.strerror)

    def _write_pid_file(self, config: Config) -> Path | None:
        """Write and lock (flock, held until exit) the pid file: the lock is how ``engines activate``
        tells this daemon from a stale pid reused by another process. Another holder is retried
        briefly (a CLI checking the lock holds it for an instant), then this daemon runs unlocked."""
        import fcntl

        path = Path(config.engines.pid_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            log.warning("cannot write pid file %s (%s); 'edgeseg engines activate' will not find this daemon",
                        path, exc.strerror)
            return None
        for _ in range(PID_LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(PID_LOCK_RETRY_S)
        else:
            os.close(fd)
            log.warning("pid file %s is locked by another edgeseg serve; not taking it over", path)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._pid_file, self._pid_fd = path, fd
        self._verdict(True, "started")
        return path

    def run(self) -> int:
        """Serve until stopped; the exit code for the process."""
        config = self._load_config()
        configure_service_logging(config.log_level, config.service.log_format)
        pid_file = self._write_pid_file(config)
        code = EXIT_OK
        self.telemetry = Telemetry()
        try:
            if self._extra_factory is not None:
                self._extra = self._extra_factory(config)
            model = open_model(config)
            try:
                self.outputs.open(config, model.spec.class_names)
            except BaseException:
                model.close()
                raise
            if self.outputs.dashboard is not None:
                log.info("dashboard on %s", self.outputs.dashboard.url)
            started = self._start(config, model)
            interval = watchdog_interval_s()
            log.info("serving: watchdog %s", f"every {interval:.1f} s" if interval else "off (not under systemd)")
            self.notifier.ready(status_line(self.stats()))
            self.build_on_start.start(config, started.runtime.model, self.request_reload)
            while not self._stop.wait(TICK_S):
                if self._reload.is_set():
                    self._reload.clear()
                    self._do_reload()
                active = self.session.generation
                assert active is not None
                if not active.pipeline.running:
                    try:
                        active.pipeline.join(0)
                        log.info("source %s ended", mask_credentials(active.config.source.uri or ""))
                    except Exception as exc:  # fatal stage error: exit non-zero so systemd restarts us
                        log.error("pipeline failed: %s: %s", type(exc).__name__, exc)
                        code = EXIT_FAILED
                    break
                self._tick_watchdog()
                self._tick_stats()
        finally:
            self.notifier.stopping()
            self._stop_active()
            self.outputs.close()
            for sink in self._extra:
                sink.close()
            self.telemetry.close()
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
            if self._pid_fd is not None:
                os.close(self._pid_fd)  # releases the lock, after the unlink
            self.notifier.close()
        return code
