"""MKL-packed weights for the hf engine's decode steps on CPU.

A decode step multiplies a few rows (one per running sequence) by every weight matrix. For 16-32 rows,
`torch.nn.functional.linear` on two threads is barely faster than on one here (MKL splits such a small
product badly), while MKL's packed GEMM, with the weight packed once for exactly `rows` rows, runs such a
product, and a whole decode step of a model with 512-wide matrices, clearly faster
(benchmarks/bench_decode_step.py, docs/benchmarks.md). So each `nn.Linear` becomes a `PackedLinear`:
same weight, same parameters, plus a packed copy (the memory of the weights once more). An input of
`rows // 2` to `rows` rows is zero-padded to `rows` and goes through the packed GEMM; any other size
(single requests, prefills) through plain `linear`. Each output row depends only on its input row, so
padding changes nothing but speed.

The packed copy is taken once: weights must not change afterwards (the engine never merges adapters into
them; PEFT's LoRA layers wrap a `PackedLinear` like any `nn.Linear`). Only float32 weights on CPU are
packed, and only where this torch has MKL; elsewhere `pack_linears` changes nothing and says so.
"""

from __future__ import annotations

import time

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


def pack_linears(model: torch.nn.Module, rows: int, *, calibrate: bool = True) -> int:
    """Turn the plain `nn.Linear`s of `model` into `PackedLinear`s for `rows` rows; returns how many.

    With `calibrate`, each weight shape is timed both ways at `rows` rows on the calling thread (so call it
    with the thread count that will run the model) and packed only where the packed GEMM is at least 10 %
    faster: on the 0.66M demo model's 128-wide matrices it is slower, on the 30M model's 512-wide ones
    much faster."""
    if rows < 2 or can_pack(model) is not None:
        return 0
    groups: dict[tuple, list[torch.nn.Linear]] = {}
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            groups.setdefault((module.in_features, module.out_features, module.bias is not None), []).append(module)
    count = 0
    for modules in groups.values():
        if calibrate and not _packed_is_faster(modules[0], rows):
            continue
        for module in modules:
            with torch.no_grad():
                module.packed_weight = torch.ops.mkl._mkl_reorder_linear_weight(module.weight.detach(), rows)
            module.__class__, module.packed_rows = PackedLinear, rows
        count += len(modules)
    return count


def _packed_is_faster(linear: torch.nn.Linear, rows: int) -> bool:
    with torch.no_grad():
        packed = torch.ops.mkl._mkl_reorder_linear_weight(linear.weight.detach(), rows)
    x = torch.randn(rows, linear.in_features)

    def best_of(call) -> float:
        call()  # the first call allocates
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(3):
                call()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        plain = best_of(lambda: torch.nn.functional.linear(x, linear.weight, linear.bias))
        fast = best_of(lambda: torch.ops.mkl._mkl_linear(x, packed, linear.weight, linear.bias, rows))
    return fast < 0.9 * plain
