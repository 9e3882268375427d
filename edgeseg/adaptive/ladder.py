"""A Model per input resolution of one network: what the adaptive picker switches between.

* A dynamic ONNX file serves every size from its one ONNX Runtime session: the ladder holds one
  ``Model`` per size that shares the base model's backend and differs only in
  ``spec.input_size``. Nothing is loaded; memory grows only by the preprocessor's tensor pool
  per size (3 + workers float32 tensors of 3 x s x s, 7.9 MB at 640 with one worker) and ONNX
  Runtime's arena for the largest shape run so far.
* A bundle has one engine per size: the engine for a size is chosen with ``select_engine`` (as
  ``load_model`` does, same precision rule, same hash check) and loaded on first use, then kept
  until ``close``. Memory grows by one loaded engine per size visited (its weights, workspace
  and I/O buffers: for TensorRT one execution context per inference worker) and never shrinks
  during a run, so the peak is every engine of the bundle at once; ``preload`` takes that
  peak at start, where it is known up front, instead of during a switch. ``prefetch`` loads in
  a background thread so the pipeline never waits for a load.
* A static ONNX file has one size: the picker can then only change post-processing effort.

The ladder owns the models it loaded; the base model stays with whoever loaded it. Close the
ladder only after the pipeline using its models has been joined.
"""

from __future__ import annotations

import logging
import threading
import typing
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from edgeseg.bundle.device import probe_device
from edgeseg.bundle.local import load_merged_manifest
from edgeseg.bundle.select import compatible_engines, resolutions, select_engine
from edgeseg.errors import BundleError, ConfigError, ModelError
from edgeseg.model import MAX_INPUT_SIZE, MIN_INPUT_SIZE, LoadOptions, Model

log = logging.getLogger(__name__)

#: Sizes a dynamic model offers when the configuration names none.
DEFAULT_DYNAMIC_SIZES = (320, 416, 512, 640)

Loader = typing.Callable[[int], Model]  # evaluated at import: typing's form for 3.8


def _size(model: Model) -> int:
    return max(model.spec.input_size)


class ModelLadder:
    """Models by input size (the larger side); thread-safe.

    Args:
        base: the model running now; its size is always on the ladder.
        sizes: every size the ladder offers.
        loader: loads the model of a size not yet held (None: every size is already held).
        held: models available without loading, by size (the base is added).
        seed_ms: latency per size from a manifest, to seed the resolution table.
        kind: "dynamic", "bundle" or "static", for logs and the dashboard.
    """

    def __init__(
        self,
        base: Model,
        sizes: Sequence[int],
        loader: Loader | None = None,
        held: dict[int, Model] | None = None,
        seed_ms: dict[int, float] | None = None,
        kind: str = "static",
    ):
        self.base = base
        self.sizes = tuple(sorted({*sizes, _size(base)}))
        self.kind = kind
        self._loader = loader
        self._models: dict[int, Model] = {**(held or {}), _size(base): base}
        self._owned: set[int] = set()
        self._seed_ms = dict(seed_ms or {})
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Thread] = {}
        self._errors: dict[int, str] = {}
        missing = [s for s in self.sizes if s not in self._models]
        if missing and loader is None:
            raise ValueError(f"sizes {missing} have no model and no loader")

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        base: Model,
        sizes: Sequence[int] = (),
        options: LoadOptions | None = None,
    ) -> ModelLadder:
        """The ladder of the network at ``path`` (what ``base`` was loaded from, with ``options``).

        ``sizes`` restricts the ladder (empty: every engine of a bundle, or 320..640 for a
        dynamic ONNX); sizes a bundle has no engine for are refused with the sizes it has. A
        bundle's other sizes are loaded with ``options``, as the base was.
        """
        if base.bundle is not None:
            return cls._open_bundle(Path(path), base, sizes, options or LoadOptions())
        if not base.spec.dynamic:
            if sizes and set(sizes) != {_size(base)}:
                log.warning("model %s has a fixed %d input: adaptive sizes %s ignored (effort levels only)",
                            base.spec.name, _size(base), list(sizes))
            return cls(base, (), kind="static")
        wanted = sorted(set(sizes or DEFAULT_DYNAMIC_SIZES))
        stride = base.spec.stride
        bad = [s for s in wanted if s % stride or not MIN_INPUT_SIZE <= s <= MAX_INPUT_SIZE]
        if bad:
            raise ConfigError(f"adaptive resolutions {bad}: expected multiples of {stride} from "
                              f"{MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}")
        held = {s: Model(replace(base.spec, input_size=(s, s)), base.backend, base.engine, base.bundle)
                for s in wanted if s != _size(base)}
        return cls(base, wanted, held=held, kind="dynamic")

    @classmethod
    def _open_bundle(cls, path: Path, base: Model, sizes: Sequence[int], options: LoadOptions) -> ModelLadder:
        path = path.resolve()
        manifest = load_merged_manifest(path)  # as load_model reads it: with device-built plans
        if manifest != base.bundle:
            raise BundleError(f"bundle {path}: changed since the model was loaded (re-flashed?); reload to use it")
        here = probe_device()
        # The runtime actually serving: the base engine's. A bundle without OpenVINO engines run
        # with model.backend openvino serves its fp32 ONNX through OpenVINO: its sizes are those
        # of the ONNX engines, and no record measured OpenVINO there, so the table has no seeds.
        runtime = base.engine.runtime if base.engine is not None else None
        twin = options.backend == "openvino" and runtime != "openvino"
        ok, _ = compatible_engines(manifest, here, runtime)
        precision = options.precision
        if precision != "auto":
            ok = [e for e in ok if e.precision == precision]
        have = resolutions(ok)
        wanted = sorted(set(sizes)) if sizes else have
        missing = [s for s in wanted if s not in have]
        if missing:
            raise BundleError(f"bundle {manifest.name}: no engine for adaptive resolutions {missing}; "
                              f"available {have}")
        seed: dict[int, float] = {}
        for s in sorted({*wanted, _size(base)}):
            if twin:
                break
            engine = base.engine if s == _size(base) and base.engine is not None else \
                select_engine(manifest, here, s, precision, runtime)
            if engine.latency is not None:
                seed[s] = engine.latency.median_ms

        def load(size: int) -> Model:
            model = options.load(path, imgsz=size)
            if model.bundle != manifest:
                model.close()
                raise BundleError(f"bundle {path}: changed while loading resolution {size}; reload to use it")
            return model

        return cls(base, wanted, loader=load, seed_ms=seed, kind="bundle")

    # -- access --------------------------------------------------------------------------------

    def seed_ms(self) -> dict[int, float]:
        """Latency per size measured at export (a bundle's manifest: the records of the runtime
        serving); empty for an ONNX file."""
        return dict(self._seed_ms)

    def ready(self, size: int) -> bool:
        """The model of ``size`` is held (no load needed)."""
        with self._lock:
            return size in self._models

    def loaded(self) -> list[int]:
        with self._lock:
            return sorted(self._models)

    def error(self, size: int) -> str | None:
        """Why the last load of ``size`` failed, or None."""
        with self._lock:
            return self._errors.get(size)

    def get(self, size: int) -> Model:
        """The model of ``size``, loading it now if needed (this blocks for the load)."""
        if size not in self.sizes:
            raise ConfigError(f"resolution {size}: not on the ladder {list(self.sizes)}")
        with self._lock:
            model = self._models.get(size)
        if model is not None:
            return model
        assert self._loader is not None
        log.info("loading resolution %d of %s", size, self.base.spec.name)
        model = self._loader(size)
        with self._lock:
            held = self._models.setdefault(size, model)
            if held is model:
                self._owned.add(size)
                self._errors.pop(size, None)
        if held is not model:  # loaded twice concurrently: keep the first
            model.close()
        return held

    def prefetch(self, size: int) -> None:
        """Start loading ``size`` in a background thread unless it is held or loading."""
        with self._lock:
            if size in self._models or size in self._loading or size not in self.sizes:
                return
            thread = threading.Thread(target=self._load_quietly, args=(size,), name=f"edgeseg-ladder-{size}",
                                      daemon=True)
            self._loading[size] = thread
        thread.start()

    def _load_quietly(self, size: int) -> None:
        try:
            self.get(size)
        except (ModelError, BundleError, ConfigError, OSError) as exc:
            log.error("cannot load resolution %d: %s", size, exc)
            with self._lock:
                self._errors[size] = str(exc)
        finally:
            with self._lock:
                self._loading.pop(size, None)

    def preload(self) -> None:
        """Load every size now (a bundle's peak memory, taken at start)."""
        for s in self.sizes:
            self.get(s)

    def close(self) -> None:
        """Close the models this ladder loaded (not the base, not a shared backend)."""
        with self._lock:
            threads = list(self._loading.values())
        for t in threads:
            t.join()
        with self._lock:
            owned = [self._models.pop(s) for s in sorted(self._owned)]
            self._owned.clear()
        for m in owned:
            m.close()
