"""The hf engine's two decode-step speed-ups give the same numbers as the plain code they replace:
`PackedLinear` (MKL-packed weights, inputs padded to the packed row count) against `nn.functional.linear`,
and `SlabLayer` (KV cache written in place) against transformers' concatenating `DynamicLayer`."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from serving.engines.hf.batch import SPARE_COLUMNS, KVBatch, new_cache
from serving.engines.hf.packed_linear import PackedLinear, can_pack, pack_linears

needs_mkl = pytest.mark.skipif(
    can_pack(torch.nn.Linear(2, 2)) is not None, reason=f"no packed GEMM here: {can_pack(torch.nn.Linear(2, 2))}"
)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@needs_mkl
@pytest.mark.parametrize("rows", [1, 7, 8, 9, 15, 16, 31, 32, 33, 200])
def test_packed_linear_equals_linear_for_every_row_count(rows):
    torch.manual_seed(rows)
    linear = torch.nn.Linear(96, 80)
    expected_weight = linear.weight.detach().clone()
    x = torch.randn(rows, 96)
    expected = torch.nn.functional.linear(x, linear.weight, linear.bias)
    assert pack_linears(linear, 16, calibrate=False) == 1
    assert isinstance(linear, PackedLinear) and isinstance(linear, torch.nn.Linear)
    with torch.inference_mode():
        got = linear(x)
        got_3d = linear(x.reshape(1, rows, 96))  # [batch, positions, features], as a model calls it
    assert got.shape == (rows, 80) and got_3d.shape == (1, rows, 80)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_3d[0], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(linear.weight, expected_weight)  # the parameter itself is untouched


@needs_mkl
def test_pack_linears_packs_every_linear_of_a_model_and_keeps_its_logits():
    model = tiny_llama()
    ids = torch.randint(0, 300, (24, 1))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert pack_linears(model, 32, calibrate=False) == linears == 2 * 7 + 1  # 7 per layer, and the head
    with torch.inference_mode():
        after = model(input_ids=ids).logits  # 24 rows: the padded, packed path
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert pack_linears(model, 32, calibrate=False) == 0  # already packed: nothing is packed twice


def test_only_float32_cpu_weights_are_packed():
    model = tiny_llama().to(torch.bfloat16)
    assert "bfloat16" in can_pack(model)
    assert pack_linears(model, 32, calibrate=False) == 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_slab_cache_equals_dynamic_cache_through_growth_and_row_changes():
    """Greedy decoding with the in-place cache gives the same logits as with DynamicCache, across a buffer
    regrowth, rows leaving (`keep`) and rows joining (`extend`)."""
    model = tiny_llama()
    steps = SPARE_COLUMNS + 10  # past the first buffer's spare columns
    ids = torch.randint(0, 300, (3, 5))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        caches = {"dynamic": DynamicCache(), "slab": new_cache()}
        logits = {}
        for name, cache in caches.items():
            out = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            seq, step_mask = [out.logits[:, -1].argmax(-1, keepdim=True)], mask
            for _ in range(steps):
                step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], dim=1)
                out = model(input_ids=seq[-1], attention_mask=step_mask, past_key_values=cache, use_cache=True)
                seq.append(out.logits[:, -1].argmax(-1, keepdim=True))
            logits[name] = out.logits
        torch.testing.assert_close(logits["slab"], logits["dynamic"], rtol=1e-5, atol=1e-5)
        slab = caches["slab"].layers[0]
        assert slab.keys.shape[2] == 5 + steps and slab.keys.data_ptr() == slab._keys.data_ptr()

        batch = KVBatch([object()] * 3, caches["slab"], step_mask)
        kept_keys = slab.keys[[0, 2]].clone()
        batch.keep([0, 2])
        assert torch.equal(batch.cache.layers[0].keys, kept_keys)
        other = KVBatch([object()], new_cache(), torch.ones(1, 4, dtype=torch.long))
        model(input_ids=ids[:1, :4], past_key_values=other.cache, use_cache=True)
        batch.extend(other)  # a 4-token row joins: left-padded to the batch's length
        layer, length = batch.cache.layers[0], 5 + steps
        assert layer.keys.shape[:3] == (3, 4, length) and torch.equal(layer.keys[:2], kept_keys)
        assert batch.mask[2].tolist() == [0] * (length - 4) + [1] * 4
        # the next decode step writes into the joined buffer's spare columns instead of copying it
        buffer = layer._keys.data_ptr()
        step_mask = torch.cat([batch.mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        model(input_ids=torch.zeros(3, 1, dtype=torch.long), attention_mask=step_mask, past_key_values=batch.cache)
        assert layer._keys.data_ptr() == buffer and layer.keys.shape[2] == length + 1
