"""AdapterRegistry on real SQLite and Postgres with real folders: names, registration, sha256 checks,
pickle refusal and path escapes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from feedback.models import Adapter
from feedback.registry import (
    AdapterError,
    AdapterRegistry,
    AdapterTampered,
    InvalidAdapterName,
    UnknownAdapter,
    UnsafeAdapter,
)
from feedback.store import FeedbackStore


@pytest.fixture
def registry(db_url: str, tmp_path: Path):
    store = FeedbackStore(db_url)
    yield AdapterRegistry(store, tmp_path / "adapters")
    store.close()


def write_adapter(folder: Path, weights: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    (folder / "README.md").write_text("trained by ratchet\n")
    return folder


def new_adapter(registry: AdapterRegistry, suffix: str | None = None, **fields) -> Adapter:
    _, name = registry.next_name(suffix)
    write_adapter(registry.root / name)
    return registry.register(name, method="sft", base_model="demo-tiny-v1", **fields)


def test_names_count_up_across_suffixes_reserve_their_folder_and_check_suffixes(registry: AdapterRegistry) -> None:
    assert registry.next_name(reserve=False) == (1, "ft-0001")
    assert registry.next_name(reserve=False) == (1, "ft-0001")  # a preview reserves nothing
    assert registry.next_name() == (1, "ft-0001")
    assert (registry.root / "ft-0001").is_dir()
    assert registry.next_name("my-run") == (2, "ft-0002-my-run")  # the reserved folder counts
    write_adapter(registry.root / "ft-0001")
    registry.register("ft-0001", method="sft", base_model="demo-tiny-v1")
    assert registry.next_name() == (3, "ft-0003")
    for suffix in ["", "Upper", "a_b", "a b", "../up", "x" * 41, "ok/no"]:
        with pytest.raises(InvalidAdapterName, match="suffix"):
            registry.next_name(suffix)
    assert registry.next_name("a-1-" + "x" * 36) == (4, "ft-0004-a-1-" + "x" * 36)


def test_register_records_hashes_relative_path_and_public_shape(registry: AdapterRegistry) -> None:
    parent = new_adapter(registry)
    child = new_adapter(registry, "dpo", parent=parent.name, metrics={"loss": 0.5}, hyperparameters={"lr": 1e-3})
    assert child.name == "ft-0002-dpo" and child.path == "ft-0002-dpo"
    weights = (registry.root / child.name / "adapter_model.safetensors").read_bytes()
    assert child.sha256 == hashlib.sha256(weights).hexdigest()
    assert set(child.files) == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    assert [a.name for a in registry.list()] == ["ft-0002-dpo", "ft-0001"]  # newest first
    public = registry.as_public(registry.get(child.name))
    assert {"name", "status", "method", "base_model", "parent", "created", "sha256", "metrics"} <= set(public)
    assert public["parent"] == "ft-0001" and public["status"] == "candidate" and public["metrics"] == {"loss": 0.5}
    assert public["hyperparameters"] == {"lr": 1e-3} and public["data_snapshot"] == {}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", public["created"])
    json.dumps(public)  # the CLI prints it as is
    assert registry.resolve_path(child.name) == (registry.root / child.name).resolve()


def test_register_refuses_duplicates_unknown_parents_and_bad_names(registry: AdapterRegistry) -> None:
    adapter = new_adapter(registry)
    with pytest.raises(AdapterError, match="registered already"):
        registry.register(adapter.name, method="sft", base_model="demo-tiny-v1")
    _, name = registry.next_name()
    write_adapter(registry.root / name)
    with pytest.raises(UnknownAdapter, match="ft-0099"):
        registry.register(name, method="sft", base_model="demo-tiny-v1", parent="ft-0099")
    with pytest.raises(InvalidAdapterName):
        registry.register("my-adapter", method="sft", base_model="demo-tiny-v1")
    with pytest.raises(UnknownAdapter):
        registry.get("ft-0404")


def test_verify_names_the_tampered_or_missing_file(registry: AdapterRegistry) -> None:
    adapter = new_adapter(registry)
    registry.verify(adapter.name)
    folder = registry.resolve_path(adapter.name)
    (folder / "adapter_model.safetensors").write_bytes(b"evil weights")
    with pytest.raises(AdapterTampered, match="adapter_model.safetensors"):
        registry.verify(adapter.name)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    registry.verify(adapter.name)
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterTampered, match="adapter_config.json"):
        registry.verify(adapter.name)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(AdapterTampered, match="adapter_config.json is missing"):
        registry.verify(adapter.name)


def test_pickle_weights_and_missing_files_are_refused(registry: AdapterRegistry) -> None:
    for pickle_name in ["training_args.bin", "adapter_model.pt", "sub/weights.pth"]:
        _, name = registry.next_name()
        folder = write_adapter(registry.root / name)
        (folder / pickle_name).parent.mkdir(exist_ok=True)
        (folder / pickle_name).write_bytes(b"\x80\x04pickle")
        with pytest.raises(UnsafeAdapter, match="pickle"):
            registry.register(name, method="sft", base_model="demo-tiny-v1")
    for missing in ["adapter_model.safetensors", "adapter_config.json"]:
        _, name = registry.next_name()
        (write_adapter(registry.root / name) / missing).unlink()
        with pytest.raises(UnsafeAdapter, match=missing):
            registry.register(name, method="sft", base_model="demo-tiny-v1")
    # A pickle that appears after registration is caught before serving.
    adapter = new_adapter(registry)
    (registry.resolve_path(adapter.name) / "extra.bin").write_bytes(b"x")
    with pytest.raises(UnsafeAdapter, match=r"extra\.bin"):
        registry.verify(adapter.name)
    assert [a.name for a in registry.list()] == [adapter.name]


def test_paths_cannot_escape_the_adapters_root(registry: AdapterRegistry, tmp_path: Path) -> None:
    outside = write_adapter(tmp_path / "outside")
    # 1) a reserved name whose folder is a symlink to somewhere else
    _, name = registry.next_name()
    (registry.root / name).rmdir()
    (registry.root / name).symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeAdapter, match="outside the adapters folder"):
        registry.register(name, method="sft", base_model="demo-tiny-v1")
    # 2) an explicit path with `..`
    with pytest.raises(UnsafeAdapter, match="outside the adapters folder"):
        registry.register("ft-0050", method="sft", base_model="demo-tiny-v1", path=registry.root / ".." / "outside")
    # 3) a file inside the folder symlinked outside
    _, name = registry.next_name()
    folder = write_adapter(registry.root / name)
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to(outside / "README.md")
    with pytest.raises(UnsafeAdapter, match="outside the adapters folder"):
        registry.register(name, method="sft", base_model="demo-tiny-v1")
    # 4) a registered adapter whose record (or folder) is changed to point outside afterwards
    adapter = new_adapter(registry)
    with registry.store.session() as session:
        session.get(Adapter, adapter.name).path = "../outside"
    with pytest.raises(UnsafeAdapter, match="outside the adapters folder"):
        registry.resolve_path(adapter.name)
    with pytest.raises(UnsafeAdapter):
        registry.verify(adapter.name)
    with registry.store.session() as session:
        session.get(Adapter, adapter.name).path = adapter.name
    folder = registry.resolve_path(adapter.name)
    folder.rename(tmp_path / "moved")
    folder.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeAdapter, match="outside the adapters folder"):
        registry.resolve_path(adapter.name)


def test_set_status_records_status_and_decision(registry: AdapterRegistry) -> None:
    adapter = new_adapter(registry)
    updated = registry.set_status(adapter.name, "rejected", decision={"promote": False, "reasons": ["win-rate 0.41"]})
    assert updated.status == "rejected"
    assert registry.get(adapter.name).decision == {"promote": False, "reasons": ["win-rate 0.41"]}
    registry.set_status(adapter.name, "retired")
    assert registry.get(adapter.name).decision["promote"] is False  # kept when none is given
    with pytest.raises(ValueError, match="not one of"):
        registry.set_status(adapter.name, "live")
    with pytest.raises(UnknownAdapter):
        registry.set_status("ft-0404", "current")
