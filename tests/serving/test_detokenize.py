"""The detokenizer and the stop-string matcher, on the demo model's byte-level BPE tokenizer."""

from __future__ import annotations

import copy
import random

from serving.detokenize import IncrementalDetokenizer, StopStringMatcher, decoder


def test_incremental_detokenizer_never_emits_broken_utf8(tokenizer):
    tok = tokenizer
    text = "naïve café 🙂 日本語 done"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode("user says:", add_special_tokens=False))
    deltas = [detok.push(i) for i in ids]
    assert "".join(deltas) + detok.flush() == text
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas, "some character should span tokens (byte-level BPE)"


def test_decoder_gives_the_text_of_tokenizer_decode(tokenizer):
    tok = tokenizer
    rng = random.Random(0)
    windows = [[rng.randrange(len(tok)) for _ in range(rng.randrange(1, 9))] for _ in range(300)]
    windows += [[tok.eos_token_id, *tok.encode(" a b", add_special_tokens=False), tok.eos_token_id]]
    for skip in (True, False):
        fast = decoder(tok, skip)
        assert [fast(ids) for ids in windows] == [tok.decode(ids, skip_special_tokens=skip) for ids in windows]
    # A tokenizer that cleans up spaces (or has its own decode) is called as it is, not bypassed.
    cleaning = copy.deepcopy(tok)
    cleaning.clean_up_tokenization_spaces = True
    cleaning.decode = lambda ids, skip_special_tokens: "via decode"
    assert decoder(cleaning, True)([5, 6]) == "via decode"


def test_stop_string_matcher_holds_back_partial_matches():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.push("abc ST") == ("abc ", False)
    assert matcher.push("ray") == ("STray", False)
    assert matcher.push(" S") == (" ", False)
    assert matcher.push("TOP and more") == ("", True)
    matcher = StopStringMatcher(["x"])
    assert matcher.push("") == ("", False) and matcher.flush() == ""
    assert StopStringMatcher(["end"]).push("the end of it") == ("the ", True)
