"""Pick the torch device for a stage: ``auto`` means CUDA when a GPU is visible."""

from __future__ import annotations

import re

from pipeline.errors import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def check_device_name(value: str) -> str:
    """Pydantic-friendly syntax check for ``device:`` values (no torch import)."""
    if not _DEVICE.match(value):
        raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return value


def resolve_device(requested: str, key: str) -> str:
    """Turn ``auto|cpu|cuda[:N]|mps`` into a device torch can use.

    Raises:
        ConfigError: the requested device does not exist on this machine.
    """
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} is {requested!r} but torch sees no CUDA GPU on this machine; use 'auto' or 'cpu'")
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key} is {requested!r} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                "use 'auto' or 'cuda:0'"
            )
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key} is 'mps' but MPS is not available on this machine; use 'auto' or 'cpu'")
    return requested
