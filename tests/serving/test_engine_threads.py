"""The hf engine's thread count is timed on its model: more threads only where they buy a faster step."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from serving.engines.hf.threads import MARGIN, _stepper, candidates, fewest_within, pick_threads


def test_candidates_are_powers_of_two_up_to_the_cpus():
    assert candidates(1) == [1]
    assert candidates(2) == [1, 2]
    assert candidates(6) == [1, 2, 4, 6]
    assert candidates(8) == [1, 2, 4, 8]


def test_an_extra_thread_must_buy_the_margin():
    assert fewest_within({1: 10.0, 2: 7.0}) == 2  # 1.43x faster: worth a core
    assert fewest_within({1: 10.0, 2: 9.0}) == 1  # 1.11x: not worth taking a core from the HTTP work
    assert fewest_within({1: 10.0, 2: 6.0, 4: 5.5}) == 2  # 4 is fastest, but 2 is within the margin of it
    assert fewest_within({1: 10.0, 2: 10.0 / MARGIN}) == 1  # exactly the margin: the fewer threads keep it
    assert fewest_within({1: 10.0, 2: 10.0 / MARGIN - 0.01}) == 2
    assert fewest_within({1: 4.0, 2: 5.0}) == 1  # a slower second thread (the demo model, often)


def test_the_timed_step_keeps_its_cache_length(demo_model_dir):
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        step, cache = _stepper(model, rows=4, context=10)
        for _ in range(3):
            step()
            assert cache.get_seq_length() == 10  # every timed step is the same work
            assert cache.layers[0].keys.shape[0] == 4


def test_pick_threads_returns_a_candidate_and_restores_the_callers_threads(demo_model_dir):
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32).eval()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert pick_threads(model, rows=8, most=2) in (1, 2)
        assert torch.get_num_threads() == 1
        assert pick_threads(model, rows=8, most=1) == 1  # nothing to choose: no timing at all
    finally:
        torch.set_num_threads(before)
