"""Shared fixtures.

`db_url` runs a test on both stores: SQLite in a temp dir, and a fresh database of its own on the real
PostgreSQL at 127.0.0.1:5432 (trust auth; created from the `test` database, dropped afterwards). Both
are migrated to the newest revision. Set RATCHET_TEST_POSTGRES to another server URL to point elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from feedback.db import migrate

from helpers import free_port, make_lora_adapter, register_test_adapter

POSTGRES_ADMIN_URL = os.environ.get("RATCHET_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _database_url(name: str) -> str:
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _postgres_database(template: str | None = None) -> Iterator[str]:
    """A new database of its own (a copy of `template` when given), dropped afterwards."""
    name = f"ratchet_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    except sa.exc.OperationalError as error:
        admin.dispose()
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {error.orig}")
    try:
        yield _database_url(name)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty, unmigrated Postgres database of this test's own."""
    yield from _postgres_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request, tmp_path) -> Iterator[str]:
    """An empty, unmigrated database: SQLite in tmp_path, or Postgres."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ratchet.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture(scope="session")
def migrated_postgres_template() -> Iterator[str]:
    """A Postgres database migrated once per session; tests get copies (CREATE DATABASE ... TEMPLATE)."""
    for url in _postgres_database():
        migrate(url)
        sa.create_engine(url).dispose()  # a template must have no open connections
        yield url.rsplit("/", 1)[1]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """A migrated database of this test's own, on SQLite and on Postgres."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ratchet.db'}"
        migrate(url)
        yield url
    else:
        yield from _postgres_database(template=request.getfixturevalue("migrated_postgres_template"))


# -- models and a served app -----------------------------------------------------------------------

DEMO_TEST_STEPS = int(os.environ.get("RATCHET_TEST_DEMO_STEPS", "300"))


@pytest.fixture(scope="session")
def demo_model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model, built once (fewer steps than `ratchet init`; greedy answers are still canonical).

    Kept in pytest's cache between runs, keyed by the builder's source and the steps, since the build
    takes a minute or more; RATCHET_TEST_MODEL_DIR points at an existing model instead.
    """
    if os.environ.get("RATCHET_TEST_MODEL_DIR"):
        return Path(os.environ["RATCHET_TEST_MODEL_DIR"])
    import retrain.demo
    from retrain.demo.build import build_demo_model, read_build_info

    sources = sorted(Path(retrain.demo.__file__).parent.glob("*.py"))
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + f"steps={DEMO_TEST_STEPS}".encode()).hexdigest()
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = cache.mkdir("ratchet-demo-model") if cache is not None else tmp_path_factory.mktemp("models")
    # The folder keeps the demo model's own name: the base model id recorded everywhere is the dir name.
    model_dir = root / key[:16] / "demo-tiny-v1"
    if read_build_info(model_dir) is None:
        for stale in root.iterdir():
            shutil.rmtree(stale, ignore_errors=True)
        build_demo_model(model_dir, seed=0, steps=DEMO_TEST_STEPS, progress=False)
    return model_dir


@pytest.fixture(scope="session")
def make_adapter(demo_model_dir: Path):
    """`make_adapter(out_dir, seed=..., r=8, base_dir=demo, **LoraConfig kwargs)`: a LoRA adapter with random
    (non-zero) A and B, so its outputs differ from the base model's."""

    def make(out_dir: Path, *, seed: int, base_dir: Path = demo_model_dir, **kwargs) -> Path:
        return make_lora_adapter(base_dir, out_dir, seed=seed, **kwargs)

    return make


@pytest.fixture(scope="session")
def lora_adapters(make_adapter, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three adapters of the demo model, by name: ada, bob, cat."""
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(root / name, seed=i + 1) for i, name in enumerate(["ada", "bob", "cat"])}


@pytest.fixture(scope="session")
def reference_logprobs(demo_model_dir: Path, lora_adapters: dict[str, Path]):
    """`reference_logprobs(prompt, ids, adapter=None)`: [len(ids), vocab] float32 log-softmax of the plain
    (PEFT) demo model's logits at each generated position, from one forward over prompt + ids."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_dir), lora_adapters["ada"], "ada")
    model.eval()

    @torch.inference_mode()
    def logprobs(prompt: list[int], ids: list[int], adapter: str | None = None):
        full = torch.tensor([prompt + ids])
        if adapter is None:
            with model.disable_adapter():
                logits = model(input_ids=full).logits
        else:
            model.set_adapter(adapter)
            logits = model(input_ids=full).logits
        return torch.log_softmax(logits[0, len(prompt) - 1 : -1].float(), dim=-1)

    return logprobs


@dataclass
class Served:
    url: str
    settings: object
    adapter: str  # a registered random-weight adapter
    prompt: str  # a corpus prompt the demo model answers well
    admin_key: str


@pytest.fixture(scope="session")
def server(tmp_path_factory, demo_model_dir) -> Iterator[Served]:
    """The full app on a real local Ray Serve (2 CPUs, one replica), shared by the whole session."""
    from deploy.server import start, stop
    from deploy.workspace import init_workspace, read_admin_key
    from ratchet.settings import Settings
    from retrain.demo import corpus

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = Settings(
        home=tmp_path_factory.mktemp("served"),
        base_model=str(demo_model_dir),
        port=free_port(),
        num_cpus=2,
        replica_cpus=1,
        torch_threads=2,
        access_log=False,
        keep_adapters=1000,  # tests share this server's adapters: none may be pruned under another test
    )
    init_workspace(settings, progress=False)
    adapter = register_test_adapter(settings)
    url = start(settings)
    try:
        yield Served(
            url=url,
            settings=settings,
            adapter=adapter,
            prompt=corpus.prompts(corpus.TOPICS[0])[0],
            admin_key=read_admin_key(settings),
        )
    finally:
        stop(settings)
