"""AdapterSlots: the adapter bookkeeping both engines share (LRU eviction, in-use protection, unloading)."""

import pytest

from serving.engine import AdapterBusyError, AdapterNotLoadedError
from serving.engines.adapter_slots import AdapterSlots


def same_path(path):
    return lambda kept: kept == path


def filled(*names, capacity=2):
    slots = AdapterSlots(capacity)
    for name in names:
        assert slots.make_room(name, same_path(f"/{name}")) == []
        slots.add(name, f"/{name}")
    return slots


def test_loading_past_capacity_evicts_the_least_recently_used_idle_adapter():
    slots = filled("a", "b")
    slots.touch("a")  # b is now the least recently used
    assert slots.make_room("c", same_path("/c")) == ["b"]


def test_an_adapter_in_use_is_never_evicted():
    slots = filled("a", "b")
    assert slots.acquire("a") == "/a"  # acquiring also makes a the most recently used
    slots.touch("b")
    assert slots.make_room("c", same_path("/c")) == ["b"]  # a is older but busy
    slots.acquire("b")
    with pytest.raises(AdapterBusyError, match="all 2 adapter slots are in use"):
        slots.make_room("c", same_path("/c"))


def test_reloading_the_same_files_is_a_no_op_and_new_files_replace_an_idle_adapter():
    slots = filled("a", "b")
    assert slots.make_room("a", same_path("/a")) is None
    assert slots.make_room("a", same_path("/a-v2")) == ["a"]  # replaced in place: nothing else evicted


def test_replacing_an_adapter_in_use_is_refused():
    slots = filled("a")
    slots.acquire("a")
    with pytest.raises(AdapterBusyError, match="'a' is in use by running requests"):
        slots.make_room("a", same_path("/a-v2"))


def test_release_says_when_the_last_request_with_an_adapter_ended():
    slots = filled("a")
    slots.acquire("a")
    slots.acquire("a")
    assert slots.release("a") is False
    assert slots.busy("a")
    assert slots.release("a") is True
    assert not slots.busy("a")


def test_an_adapter_being_unloaded_takes_no_requests_and_cannot_be_loaded_again():
    slots = filled("a", "b")
    slots.acquire("a")
    assert slots.begin_unload("a") is False  # a request still runs with it
    assert slots.listed() == ("b",)
    with pytest.raises(AdapterNotLoadedError):
        slots.acquire("a")
    with pytest.raises(AdapterBusyError, match="'a' is being unloaded"):
        slots.make_room("a", same_path("/a"))
    assert slots.release("a") is True
    assert slots.remove("a") == "/a"
    assert "a" not in slots and len(slots) == 1
    assert slots.make_room("a", same_path("/a")) == []  # gone: loadable again


def test_unknown_adapters_are_refused():
    slots = filled("a")
    with pytest.raises(AdapterNotLoadedError, match="'x' is not loaded"):
        slots.acquire("x")
    with pytest.raises(AdapterNotLoadedError):
        slots.begin_unload("x")
