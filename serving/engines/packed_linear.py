"""MKL-packed weights for the hf engine's decode steps on CPU.

A decode step multiplies a few rows (one per running sequence) by every weight matrix. For 16-32 rows,
`torch.nn.functional.linear` on two threads is barely faster than on one here (MKL splits such a small
product badly), while MKL's packed GEMM, with the weight packed once for exactly `rows` rows, runs 2.6x
faster (benchmarks/bench_packed_linear.py). So each `nn.Linear` becomes a `PackedLinear`: same weight,
same parameters, plus a packed copy (the memory of the weights once more). An input of `rows // 2` to
`rows` rows is zero-padded to `rows` and goes through the packed GEMM; any other size (single requests,
prefills) through plain `linear`. Each output row depends only on its input row, so padding changes
nothing but speed.

The packed copy is taken once: weights must not change afterwards (the engine never merges adapters into
them; PEFT's LoRA layers wrap a `PackedLinear` like any `nn.Linear`). Only float32 weights on CPU are
packed, and only where this torch has MKL; elsewhere `pack_linears` changes nothing and says so.
"""

from __future__ import annotations

import torch


class PackedLinear(torch.nn.Linear):
    """An `nn.Linear` with an MKL-packed copy of its weight for inputs of `rows // 2` to `rows` rows."""

    packed_rows: int
    packed_weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel() // self.in_features
        if not self.packed_rows // 2 <= n <= self.packed_rows or x.dtype != torch.float32:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        flat = x.reshape(n, self.in_features)
        if n < self.packed_rows:
            flat = torch.nn.functional.pad(flat, (0, 0, 0, self.packed_rows - n))
        out = torch.ops.mkl._mkl_linear(flat, self.packed_weight, self.weight, self.bias, self.packed_rows)
        return out[:n].reshape(*x.shape[:-1], self.out_features)


def can_pack(model: torch.nn.Module) -> str | None:
    """Why `model` cannot be packed here, or None."""
    if not torch.backends.mkl.is_available() or not hasattr(torch.ops.mkl, "_mkl_linear"):
        return "this torch has no MKL"
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        return f"weights are {param.dtype} on {param.device.type} (only float32 on CPU is packed)"
    return None


def pack_linears(model: torch.nn.Module, rows: int) -> int:
    """Turn every plain `nn.Linear` of `model` into a `PackedLinear` for `rows` rows; returns how many."""
    if rows < 2 or can_pack(model) is not None:
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            with torch.no_grad():
                packed = torch.ops.mkl._mkl_reorder_linear_weight(module.weight.detach(), rows)
            module.__class__ = PackedLinear
            module.packed_rows, module.packed_weight = rows, packed
            count += 1
    return count
