"""Build a TensorRT plan from an ONNX file: the one step of making engines that needs the GPU.

It lives in the runtime package, not in the export stage, because a plan runs only with the
TensorRT version and the GPU model that built it: the device builds its own plans from the ONNX
files of a bundle (``edgeseg engines build``, ``edgeseg.flash.build``) with the runtime's
dependencies plus TensorRT, no torch or onnxsim. The export stage calls it too, where a
workstation has TensorRT.

Which flags, profiles and ONNX contents each precision needs on each TensorRT release is decided
by ``edgeseg.backends.trt_plan`` (tested without a GPU); this module only calls TensorRT's Python
API with those decisions, through the calls that exist from 8.5 to 11.x: ``Builder``,
``create_network``, ``OnnxParser.parse_from_file``, ``set_memory_pool_limit`` and
``build_serialized_network``. tensorrt is imported inside the functions, so importing this
module is free and ``tensorrt_available()`` answers on any machine.

The builder record names the TensorRT version and the GPU's identity (compute capability, SM
count, Jetson board: ``edgeseg.bundle.device.builder_record``); the runtime refuses a plan whose
record does not match its device (bundle/verify.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from edgeseg.backends import trt_plan
from edgeseg.backends.tensorrt import tensor_dims, tensorrt_version, trt_logger
from edgeseg.bundle.device import builder_record, probe_device
from edgeseg.bundle.manifest import BuilderRecord
from edgeseg.durable import write_atomically  # plans and the timing cache, never half-written
from edgeseg.errors import ExportError

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

MIB: Final = 1 << 20
#: Parser errors quoted in the one-line ExportError; the rest are counted.
PARSER_ERRORS_SHOWN: Final = 1


def tensorrt_available() -> bool:
    """TensorRT can be imported here (an empty stub-only ``tensorrt`` package does not count)."""
    return tensorrt_version() is not None


def _network_flags(decisions: trt_plan.BuildDecisions) -> int:
    """OR of the creation flags; EXPLICIT_BATCH is only touched where it exists (< 10)."""
    import tensorrt as trt  # noqa: PLC0415

    flags = 0
    for name in decisions.network_flags:
        if name == "EXPLICIT_BATCH":
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        else:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _parse(parser: trt.OnnxParser, onnx_path: Path) -> None:
    """Parse the ONNX file, or ExportError with the parser's first error on one line."""
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    shown = "; ".join(" ".join(f"node {e.node()}: {e.desc()}".split()) for e in errors[:PARSER_ERRORS_SHOWN])
    more = f" (and {len(errors) - PARSER_ERRORS_SHOWN} more)" if len(errors) > PARSER_ERRORS_SHOWN else ""
    raise ExportError(f"{onnx_path}: TensorRT cannot parse it: {shown or 'no error reported'}{more}")


def _traits(network: trt.INetworkDefinition) -> trt_plan.NetworkTraits:
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    return trt_plan.network_traits(
        (layer.type.name for layer in layers),
        (layer.get_output(j).dtype.name for layer in layers for j in range(layer.num_outputs)),
    )


def _add_profiles(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    config: trt.IBuilderConfig,
    count: int,
    resolution: tuple[int, int] | None,
    max_batch: int = trt_plan.BATCH,
) -> None:
    """Profiles for dynamic inputs (``trt_plan.build_profiles``): one resolution, batch min 1 /
    opt ``max_batch`` / max ``max_batch``; a static batch-1 ONNX needs none."""
    import tensorrt as trt  # noqa: PLC0415

    specs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        specs.append(trt_plan.TensorSpec(
            tensor.name, True, tensor_dims(tensor.shape), trt_plan.numpy_dtype(tensor.dtype.name)
        ))
    shapes = trt_plan.build_profiles(specs, resolution, max_batch)
    for _ in range(count if shapes else 0):
        profile = builder.create_optimization_profile()
        for name, s in shapes.items():
            profile.set_shape(name, trt.Dims(list(s.min)), trt.Dims(list(s.opt)), trt.Dims(list(s.max)))
        if config.add_optimization_profile(profile) < 0:
            raise ValueError(f"TensorRT refused the optimisation profile {shapes}")


def _use_timing_cache(config: trt.IBuilderConfig, path: Path | None) -> None:
    """Start from the saved timing cache (rebuilds take seconds, not minutes) or a fresh one."""
    if path is None:
        return
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError as exc:
        log.warning("%s: cannot read the timing cache (%s); starting a fresh one", path, exc.strerror or exc)
        data = b""
    if not config.set_timing_cache(config.create_timing_cache(data), False):
        log.warning("%s: timing cache from another TensorRT version or GPU; starting a fresh one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: trt_plan.Precision,
    *,
    workspace_mib: int = 1024,
    timing_cache: Path | None = None,
    resolution: tuple[int, int] | None = None,
    max_batch: int = trt_plan.BATCH,
) -> BuilderRecord:
    """Build ``onnx_path`` into the plan file ``engine_path`` and say what built it.

    Args:
        precision: fp32, fp16, or int8 (from a Q/DQ ONNX only, see ``trt_plan.build_decisions``).
        workspace_mib: TensorRT's tactic workspace limit.
        timing_cache: a file to load tactic timings from and save them to (optional).
        resolution: (height, width) for an ONNX with a dynamic input; edgeseg's export writes
            static ONNX files, one per resolution, which need none.
        max_batch: the most frames one call of the engine runs (profile min 1 / opt N / max N);
            above 1 the ONNX needs a symbolic batch dimension (``export --batch``).
    """
    found = tensorrt_version()
    if found is None:
        raise ExportError(f"{onnx_path}: cannot build a TensorRT engine here: TensorRT is not installed")
    import tensorrt as trt  # noqa: PLC0415

    if workspace_mib < 1:
        raise ExportError(f"workspace {workspace_mib} MiB: expected at least 1")
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path}: ONNX file not found")
    here = probe_device()
    if here.gpu is None or here.compute_capability is None:
        raise ExportError(f"{onnx_path}: no CUDA GPU identified (pycuda or nvidia-ml-py); a plan must record its GPU")
    try:
        decisions = trt_plan.build_decisions(trt_plan.TrtVersion.parse(found), precision)
        logger = trt_logger()
        builder = trt.Builder(logger)
        network = builder.create_network(_network_flags(decisions))
        parser = trt.OnnxParser(network, logger)
        _parse(parser, onnx_path)
        problem = trt_plan.network_problem(decisions, _traits(network))
        if problem is not None:
            raise ExportError(f"{onnx_path}: {problem}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib * MIB)
        for flag in decisions.builder_flags:
            config.set_flag(trt.BuilderFlag.FP16 if flag == "FP16" else trt.BuilderFlag.INT8)
        _add_profiles(builder, network, config, decisions.profiles, resolution, max_batch)
        _use_timing_cache(config, timing_cache)
        t0 = time.monotonic()
        plan: trt.IHostMemory | None = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError(f"{onnx_path}: TensorRT {found} could not build a {precision} engine (see its log)")
        write_atomically(engine_path, memoryview(plan))
        if timing_cache is not None:
            write_atomically(timing_cache, memoryview(config.get_timing_cache().serialize()))
    except ValueError as exc:
        raise ExportError(f"{onnx_path}: {exc}") from None
    except OSError as exc:
        raise ExportError(f"{engine_path}: cannot write ({exc.strerror or exc})") from None
    log.info("built %s (%s, TensorRT %s, %s) in %.0f s, %d bytes", engine_path.name, precision, found, here.gpu,
             time.monotonic() - t0, plan.nbytes)
    return builder_record(here, found)
