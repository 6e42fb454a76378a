"""Which device and dtype to compute in, decided by what the hardware actually runs fast.

CPUs without native bf16 matmuls run bf16 hundreds of times slower than float32, so the CPU always
gets float32; a CUDA GPU with bf16 support gets bf16. Knows nothing about models or data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def select_placement(prefer: str = "auto") -> Placement:
    """``prefer`` is "auto", "cpu" or "cuda"."""
    if prefer not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {prefer!r}: use auto, cpu or cuda")
    if prefer != "cpu" and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return Placement(torch.device("cuda"), dtype)
    return Placement(torch.device("cpu"), torch.float32)
