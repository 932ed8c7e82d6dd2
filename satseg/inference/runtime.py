"""Where and in what precision the model runs: device choice, autocast dtype, convolution weights stored in
that dtype, and the memory layout of windows and weights."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from satseg.errors import SatsegError
from satseg.inference.options import check_device_name, check_precision_name


def pick_device(requested: str) -> torch.device:
    """``auto`` → CUDA, else MPS, else CPU; an unavailable explicit choice is a one-line error."""
    requested = check_device_name(requested)
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SatsegError("--device cuda was asked for, but no CUDA GPU is available "
                              "(use --device cpu, or install a CUDA build of torch)")
        return torch.device(requested)
    if requested == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise SatsegError("--device mps was asked for, but Apple MPS is not available")
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32)."""
    precision = check_precision_name(precision)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":  # upstream SAT's own inference precision (torch.cuda.amp.autocast: float16)
        return torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def cast_conv_weights(model: torch.nn.Module, dtype: torch.dtype,
                      originals: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Store the convolutions' weights and biases in ``dtype``; returns the float32 originals (on the CPU).

    Under autocast every convolution casts its weight and bias to the autocast dtype on each call (and
    autocast keeps those copies while it is active): stored in that dtype up front, the results are
    bit-identical and the float32 copies no longer take GPU memory (most of SAT-Pro's weights are
    convolutions: benchmarks/RESULTS.md §5). Other layers (linear, attention, norms) are left in float32.

    Each original is recorded in ``originals`` (filled in place when given) before its parameter is cast, so
    a failure part-way (a GPU out of memory) leaves a dict that :func:`restore_weights` fully undoes.
    """
    originals = {} if originals is None else originals
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            for param_name, param in module.named_parameters(recurse=False):
                originals[f"{name}.{param_name}"] = param.detach().to("cpu", copy=True)
                param.data = param.data.to(dtype)
    return originals


def restore_weights(model: torch.nn.Module, originals: dict[str, torch.Tensor]) -> None:
    """Undo :func:`cast_conv_weights`: put the float32 originals back, on the parameters' device and in
    their current memory layout."""
    params = dict(model.named_parameters())
    for name, value in originals.items():
        param = params[name]
        param.data = torch.empty_like(param, dtype=value.dtype).copy_(value)  # empty_like keeps the strides


def window_layout(device: torch.device, autocast: torch.dtype | None) -> torch.memory_format:
    """Memory layout of windows and weights: ``channels_last_3d`` on CUDA and for CPU autocast, contiguous for
    the CPU in fp32.

    CPU autocast convolutions are faster in channels_last_3d (benchmarks/RESULTS.md §2). On CUDA, cuDNN
    converts contiguous inputs to NHWC and back (copies of full-resolution tensors): channels_last_3d is a
    little slower per window but needs less peak memory, and memory is what the GPU is short of (§5;
    torch.compile was measured in channels_last_3d too).
    """
    if device.type == "cuda" or (device.type == "cpu" and autocast is not None):
        return torch.channels_last_3d
    return torch.contiguous_format


def prepare_layout(model, device: torch.device, autocast: torch.dtype | None):
    """Put the model's weights in :func:`window_layout`; returns the model."""
    return model.to(memory_format=window_layout(device, autocast))


@dataclass
class DeviceState:
    """Where the model runs and in what form: the one place device, precision and weight-layout state live.

    Attributes:
        device: the torch device.
        autocast: the autocast dtype (``None``: float32).
        conv_dtype: the dtype the convolution weights are stored in now (``None``: float32).
        fp32_convs: their float32 originals (on the CPU) while they are cast.
        layout_for: (device, autocast, compiled) the weights were last laid out for.
        encode: the compiled image side, when ``--compile`` is on.
    """

    device: torch.device
    autocast: torch.dtype | None
    conv_dtype: torch.dtype | None = None
    fp32_convs: dict = field(default_factory=dict)
    layout_for: tuple | None = None
    encode: object = None


def default_feature_budget() -> int:
    """Bytes of backbone features :meth:`Predictor.set_scan` keeps: a quarter of the memory this process can still
    get, at most 4 GiB (when memory is unknown: 1 GiB)."""
    from satseg.io.memory import _available_memory

    available = _available_memory()
    return min(4 << 30, available // 4) if available else 1 << 30
