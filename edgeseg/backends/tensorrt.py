"""TensorRT backend: a serialized engine run through the name-based tensor API with pycuda buffers.

tensorrt and pycuda are imported inside the functions that need them, so importing this module
costs nothing and a machine without them gets a one-line ``BundleError`` instead of a traceback.
Every decision that needs no GPU (versions, shapes, sizes, context counts) is made by
``edgeseg.backends.trt_plan`` and tested there; this module only carries it out.

Threads and CUDA (docs/tensorrt.md, "pycuda"). pycuda keeps a context stack per thread, while the
pipeline calls ``infer`` from several worker threads. The backend therefore owns ONE context, the
device's primary context (the one TensorRT's CUDA runtime calls use, so pycuda memory and
TensorRT agree), and every call from any thread pushes it and pops it in ``finally``. Concurrent
calls run on separate slots: each an ``IExecutionContext`` with its own stream and its own
page-locked host and device buffers, allocated once from the buffer plan (a context must not be
shared by two streams at once). Slots are created lazily up to ``contexts`` and handed out from a
pool rather than tied to threads, so a thread that ends does not strand its slot and a further
thread waits for a free one instead of failing.

Batches (docs/tensorrt.md, "Batch profiles"). An engine built with ``--batch N`` has a symbolic
batch dimension and the profile min 1 / opt N / max N. Every slot's buffers are allocated once for
N frames; a call of n <= N frames sets the context's input shape to n (only when it differs from
the slot's last call: the shape stays set on the context), copies n frames in and n frames' outputs
out, the leading part of each buffer. A static batch-N engine runs N frames every call (the base
class pads); a batch-1 engine is called once per frame (``Backend.infer_batch``).

Outputs are returned as copies of the pinned host buffers. The pipeline's output thread decodes
a frame while the same slot already runs a later one, and how long it holds a result depends on
the double buffer and the in-order reassembly of several workers; a ring of pinned buffers would
have to be deeper than that count, which the backend cannot know, to be safe. Copying the two
yolov8-seg outputs at 640 (about 7 MB) is an estimated half a millisecond to a millisecond of
memcpy on Jetson-class memory bandwidth (estimated, not measured: no Jetson here), small next
to the inference, and it is the one per-frame allocation this backend makes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from edgeseg.backends import trt_plan
from edgeseg.backends.base import Backend, Dim, NetworkInfo, TensorInfo
from edgeseg.errors import BundleError, ModelError

if TYPE_CHECKING:
    import pycuda.driver as cuda
    import tensorrt as trt

log = logging.getLogger(__name__)

#: The CUDA device engines run on (Jetsons have one GPU; desktops use the first).
DEVICE: Final = 0
#: How long ``close`` waits for calls in flight before it leaves their buffers allocated.
CLOSE_WAIT_S: Final = 5.0


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None when it is absent.

    A ``tensorrt`` that imports without a ``__version__`` is the empty namespace package that
    ``pip install tensorrt-stubs`` leaves behind, not TensorRT: it counts as absent.
    """
    try:
        import tensorrt  # noqa: PLC0415 - optional and heavy
    except ImportError:
        return None
    version = getattr(tensorrt, "__version__", None)
    return version if isinstance(version, str) else None


@functools.lru_cache(maxsize=1)
def trt_logger() -> trt.ILogger:
    """The process's one TensorRT logger (it must outlive every builder, runtime and engine)."""
    import tensorrt as trt  # noqa: PLC0415

    return trt.Logger(trt.Logger.WARNING)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def tensor_dims(dims: trt.Dims) -> tuple[int, ...]:
    """A ``trt.Dims`` as a tuple (``-1`` where dynamic)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def tensor_specs(engine: trt.ICudaEngine, version: trt_plan.TrtVersion) -> list[trt_plan.TensorSpec]:
    """The engine's I/O tensors in its order, through the name-based API (8.5+)."""
    import tensorrt as trt  # noqa: PLC0415

    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        specs.append(
            trt_plan.TensorSpec(
                name=name,
                is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                shape=tensor_dims(engine.get_tensor_shape(name)),
                dtype=trt_plan.numpy_dtype(engine.get_tensor_dtype(name).name, version),
            )
        )
    return specs


class _Slot:
    """One execution context with its stream and buffers; used by one thread at a time."""

    def __init__(
        self,
        context: trt.IExecutionContext,
        stream: cuda.Stream,
        host: dict[str, npt.NDArray[Any]],
        device: dict[str, cuda.DeviceAllocation],
    ) -> None:
        self.context: trt.IExecutionContext | None = context
        self.stream = stream
        self.host = host
        self.device = device
        #: Frames the context's input shape is set to now (a dynamic batch is set per call).
        self.batch = 0

    def free(self) -> None:
        """Free the buffers and drop the context; call with the CUDA context pushed."""
        for allocation in self.device.values():
            allocation.free()
        for array in self.host.values():
            base = array.base  # a pycuda HostAllocation, freed now rather than by the GC
            free = getattr(base, "free", None)
            if callable(free):
                free()
        self.device.clear()
        self.host.clear()
        self.context = None


class TensorRTBackend(Backend):
    """A TensorRT engine file behind the Backend interface.

    Args:
        engine_path: the serialized plan (``*.engine``) of one resolution.
        resolution: (height, width) for an engine with a dynamic input; a static engine must
            agree with it when given.
        metadata: the model's key/value metadata (a plan carries none; bundles pass the
            manifest's, see ``edgeseg.model.bundle_metadata``).
        contexts: most execution contexts (and so concurrent ``infer`` calls) to open.

    ``info`` reports the shapes the buffers are planned for (concrete, resolution applied), not
    the engine's ``-1`` dimensions: this backend runs exactly those shapes. The one exception is a
    batch profile above 1, whose leading dimension is reported as ``"batch"`` (any batch from the
    profile's min to ``max_batch`` runs, see ``infer``).
    """

    def __init__(
        self,
        engine_path: str | Path,
        resolution: tuple[int, int] | None = None,
        metadata: dict[str, str] | None = None,
        contexts: int = trt_plan.DEFAULT_CONTEXTS,
    ) -> None:
        self._path = path = Path(engine_path)
        if contexts < 1:
            raise ValueError(f"contexts {contexts}: expected at least 1")
        found = tensorrt_version()
        if found is None:
            raise BundleError(
                f"{path}: cannot run a TensorRT engine here: TensorRT is not installed (it comes with JetPack "
                f"or NVIDIA's wheels); use the bundle's onnxruntime engine"
            )
        try:
            import pycuda.driver as cuda  # noqa: PLC0415
        except ImportError:
            raise BundleError(
                f"{path}: cannot run a TensorRT engine here: pycuda is not installed (pip install pycuda, "
                f"which needs the CUDA toolkit)"
            ) from None
        try:
            self._version = trt_plan.TrtVersion.parse(found)
            trt_plan.require_supported(self._version)
        except ValueError as exc:
            raise BundleError(f"{path}: {exc}") from None
        try:
            serialized = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{path}: cannot read engine ({exc.strerror or exc})") from None

        self._lock = threading.Condition()
        self._slots: list[_Slot] = []
        self._free: list[_Slot] = []
        self._busy = 0
        self._closed = False
        self._runtime: trt.Runtime | None = None
        self._engine: trt.ICudaEngine | None = None
        try:
            cuda.init()
            self._cuda = cuda.Device(DEVICE).retain_primary_context()
        except cuda.Error as exc:
            raise BundleError(f"{path}: no usable CUDA device {DEVICE} ({_first_line(exc)})") from None
        try:
            with self._current():
                self._load(serialized, resolution, contexts)
        except BaseException:
            with self._current():
                self._release(list(self._slots))
            self._detach()
            raise
        self.info = NetworkInfo(
            path=str(path),
            inputs=tuple(TensorInfo(t.name, self._reported(t.shape), str(t.dtype)) for t in self._plan.inputs),
            outputs=tuple(TensorInfo(t.name, self._reported(t.shape), str(t.dtype)) for t in self._plan.outputs),
            metadata=dict(metadata or {}),
            provider=f"TensorRT {self._version}",
        )
        log.debug("loaded %s with TensorRT %s, up to %d contexts, batch %d..%d, %d buffer bytes each",
                  path, self._version, self._max_slots, self._batch_low, self._batch_high, self._plan.nbytes)

    def _reported(self, shape: tuple[int, ...]) -> tuple[Dim, ...]:
        """A planned shape as ``info`` reports it: ``"batch"`` leading where calls may vary it."""
        if self._batch_varies and shape:
            return ("batch", *shape[1:])
        return shape

    @property
    def _batch_varies(self) -> bool:
        return self._batch_low < self._batch_high

    @property
    def max_batch(self) -> int:
        """The most frames one call runs: the profile's maximum, or the engine's static batch."""
        return self._batch_high

    @contextlib.contextmanager
    def _current(self) -> Iterator[None]:
        """The backend's CUDA context made current on this thread for the block.

        pycuda's context stack is per thread, so each call pushes the one context the engine and
        buffers belong to, and pops it however the block ends (an unpopped context aborts the
        process at exit). It is the primary context, which TensorRT's CUDA runtime calls also use.
        """
        import pycuda.driver as cuda  # noqa: PLC0415

        self._cuda.push()
        try:
            yield
        finally:
            cuda.Context.pop()

    def _detach(self) -> None:
        import pycuda.driver as cuda  # noqa: PLC0415

        try:
            self._cuda.detach()
        except cuda.Error as exc:  # detaching is bookkeeping; the memory is already freed
            log.debug("%s: detaching the CUDA context: %s", self._path, _first_line(exc))

    def _load(self, serialized: bytes, resolution: tuple[int, int] | None, contexts: int) -> None:
        """Deserialize, plan the buffers and open the first slot (CUDA context current)."""
        import tensorrt as trt  # noqa: PLC0415

        self._runtime = runtime = trt.Runtime(trt_logger())
        engine: trt.ICudaEngine | None = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise BundleError(
                f"{self._path}: TensorRT {self._version} cannot deserialize this engine (built by another "
                f"TensorRT version or for another GPU architecture; rebuild it on this device)"
            )
        self._engine = engine
        try:
            self._specs = tensor_specs(engine, self._version)
        except ValueError as exc:
            raise BundleError(f"{self._path}: {exc}") from None
        inputs = [s for s in self._specs if s.is_input]
        if len(inputs) != 1:
            raise BundleError(f"{self._path}: expected one image input, found {len(inputs)}")
        self._resolution = resolution
        self._dynamic = inputs[0].is_dynamic
        self._max_slots = trt_plan.context_count(
            self._version, self._dynamic, engine.num_optimization_profiles, contexts
        )
        if self._max_slots < contexts:
            log.warning("%s: dynamic-shape engine with %d profile(s) on TensorRT %s: %d context(s), not %d",
                        self._path, engine.num_optimization_profiles, self._version, self._max_slots, contexts)
        profile = self._profiles(0).get(inputs[0].name)
        try:
            self._input_shape = trt_plan.input_shape(inputs[0], resolution, profile)
        except ValueError as exc:
            raise BundleError(f"{self._path}: {exc}") from None
        # Buffers hold the largest batch the profile allows; a call of fewer frames uses their
        # leading part after setting the context's input shape to its batch.
        self._batch_low, self._batch_high = trt_plan.batch_range(inputs[0], profile)
        # The first slot is opened now: it settles the output shapes (only a context knows them
        # once the input shape is set) and reports a bad resolution at load, not at the first frame.
        first = self._open_slot(0)
        self._slots.append(first)
        self._free.append(first)

    def _profiles(self, index: int) -> dict[str, trt_plan.ProfileShapes]:
        """Shapes of the profile context ``index`` uses, for each dynamic input."""
        assert self._engine is not None
        profile = trt_plan.profile_index(self._version, self._dynamic, index)
        shapes = {}
        for spec in self._specs:
            if spec.is_input and spec.is_dynamic:
                low, opt, high = (tensor_dims(d) for d in self._engine.get_tensor_profile_shape(spec.name, profile))
                shapes[spec.name] = trt_plan.ProfileShapes(low, opt, high)
        return shapes

    def _open_slot(self, index: int) -> _Slot:
        """Context, stream and buffers for slot ``index`` (CUDA context current)."""
        import pycuda.driver as cuda  # noqa: PLC0415

        assert self._engine is not None
        context: trt.IExecutionContext | None = self._engine.create_execution_context()
        if context is None:
            raise BundleError(f"{self._path}: TensorRT could not create execution context {index} (GPU memory?)")
        stream = cuda.Stream()
        if not self._version.shares_profiles_between_contexts and self._dynamic:
            profile = trt_plan.profile_index(self._version, self._dynamic, index)
            if not context.set_optimization_profile_async(profile, stream.handle):
                raise BundleError(f"{self._path}: cannot select optimisation profile {profile}")
        source = next(s for s in self._specs if s.is_input)
        if source.is_dynamic and not context.set_input_shape(source.name, self._input_shape):
            raise BundleError(f"{self._path}: TensorRT refused input shape {self._input_shape} for {source.name!r}")
        if index == 0:
            resolved = {s.name: tensor_dims(context.get_tensor_shape(s.name)) for s in self._specs if not s.is_input}
            try:
                self._plan = trt_plan.plan_buffers(self._specs, self._resolution, self._profiles(0), resolved)
            except ValueError as exc:
                raise BundleError(f"{self._path}: {exc}") from None
        host: dict[str, npt.NDArray[Any]] = {}
        device: dict[str, cuda.DeviceAllocation] = {}
        slot = _Slot(context, stream, host, device)
        slot.batch = self._input_shape[0]
        try:
            for t in self._plan.tensors:
                host[t.name] = cuda.pagelocked_empty(t.shape, t.dtype)
                device[t.name] = cuda.mem_alloc(max(t.nbytes, 1))
                # Addresses never change for a slot, so they are bound once here, not per frame.
                if not context.set_tensor_address(t.name, int(device[t.name])):
                    raise BundleError(f"{self._path}: TensorRT refused the buffer of {t.name!r}")
        except BaseException:
            slot.free()
            raise
        return slot

    def _release(self, slots: list[_Slot]) -> None:
        """Free ``slots``, then the engine and runtime, in that order (CUDA context current)."""
        for slot in slots:
            slot.free()
        self._free.clear()
        self._slots.clear()
        self._engine = None
        self._runtime = None

    def _acquire(self) -> _Slot:
        """A free slot, a new one while fewer than the maximum exist, else wait for one."""
        with self._lock:
            while True:
                if self._closed:
                    raise ModelError(f"{self._path}: TensorRT backend used after close()")
                if self._free:
                    slot = self._free.pop()
                    break
                if len(self._slots) < self._max_slots:
                    slot = self._open_slot(len(self._slots))
                    self._slots.append(slot)
                    break
                self._lock.wait()
            self._busy += 1
            return slot

    def _give_back(self, slot: _Slot) -> None:
        with self._lock:
            self._busy -= 1
            self._free.append(slot)
            self._lock.notify_all()

    def infer(self, inputs: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.float32]]:
        """Run one frame, or a batch within the engine's profile, on a free slot; returns copies
        (see the module docstring) with the input's batch as their leading dimension."""
        import pycuda.driver as cuda  # noqa: PLC0415

        source = self._plan.inputs[0]
        try:
            n = trt_plan.call_batch(source.shape, inputs.shape, self._batch_low, self._batch_high)
        except ValueError as exc:
            raise ModelError(f"{self._path}: {exc}") from None
        try:
            with self._current():
                slot = self._acquire()
                try:
                    return self._run(slot, inputs, n)
                finally:
                    self._give_back(slot)
        except cuda.Error as exc:
            raise ModelError(f"{self._path}: CUDA error during inference: {_first_line(exc)}") from exc

    def _run(self, slot: _Slot, inputs: npt.NDArray[np.float32], n: int) -> list[npt.NDArray[np.float32]]:
        """Set the batch, copy in, execute, copy out, wait; all on the slot's stream.

        Only the leading ``n`` frames of each buffer move: a partial batch costs its own copies.
        """
        import pycuda.driver as cuda  # noqa: PLC0415

        assert slot.context is not None
        source = self._plan.inputs[0]
        if n != slot.batch:  # only a dynamic batch gets here: call_batch holds a static one to its size
            shape = (n, *source.shape[1:])
            if not slot.context.set_input_shape(source.name, shape):
                raise ModelError(f"{self._path}: TensorRT refused input shape {shape} for {source.name!r}")
            slot.batch = n
        host_in = slot.host[source.name][:n]
        np.copyto(host_in, inputs, casting="same_kind")
        cuda.memcpy_htod_async(slot.device[source.name], host_in, slot.stream)
        if not slot.context.execute_async_v3(slot.stream.handle):
            raise ModelError(f"{self._path}: TensorRT execute_async_v3 failed (see the TensorRT log)")
        for t in self._plan.outputs:
            cuda.memcpy_dtoh_async(slot.host[t.name][:n], slot.device[t.name], slot.stream)
        slot.stream.synchronize()
        return [slot.host[t.name][:n].astype(np.float32) for t in self._plan.outputs]

    def close(self) -> None:
        """Free every buffer, context and the engine, then detach the CUDA context. Idempotent.

        Safe from any thread: the frees run with the backend's CUDA context pushed. Calls still
        in flight get ``CLOSE_WAIT_S`` to finish; should one hang, its memory is left allocated
        (freeing buffers under a running kernel would be worse than the leak).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()  # callers waiting for a slot give up
            deadline = time.monotonic() + CLOSE_WAIT_S
            while self._busy and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            busy = self._busy
        if busy:
            log.warning("%s: %d inference call(s) still running after %.0f s; their buffers stay allocated",
                        self._path, busy, CLOSE_WAIT_S)
            with self._lock:
                free = list(self._free)
            with self._current():
                for slot in free:
                    slot.free()
            return
        with self._current():
            self._release(list(self._slots))
        self._detach()
