"""ratchet's one settings object.

Every field has a default, a help text and an environment variable `RATCHET_<FIELD>` (for example
`RATCHET_HOME`, `RATCHET_DATABASE_URL`). This module is a leaf: it imports nothing of ours, so every
package may read it.

The workspace (`home`) holds everything a run produces:

    <home>/ratchet.db     the SQLite store (unless database_url points elsewhere)
    <home>/models/        base models (the demo model is built here by `ratchet init`)
    <home>/adapters/      trained LoRA adapters, one folder per registered name
    <home>/runs/          training runs: metrics CSV, loss plots
    <home>/reports/       evaluation reports
    <home>/regression/    the regression suite (*.jsonl; the demo's is written by init)
    <home>/admin.key      the admin token (mode 0600, no trailing newline)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_MODEL_NAME = "demo-tiny-v1"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RATCHET_", extra="ignore")

    # -- workspace and store ------------------------------------------------------------------
    home: Path = Field(Path(".ratchet"), description="Workspace directory (store, models, adapters, runs).")
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the feedback store; empty means SQLite at <home>/ratchet.db. "
        "Postgres: postgresql+psycopg://user@host:5432/db",
    )
    log_batch_size: int = Field(64, ge=1, description="Completions written per commit by the batched log writer.")
    log_flush_seconds: float = Field(
        0.2, gt=0, description="Longest time a completion waits in the log writer before it is committed."
    )

    # -- model and engine ---------------------------------------------------------------------
    base_model: str = Field(
        "",
        description="Base model: a local Hugging Face model directory (or hub id where a hub is reachable). "
        "Empty means the demo model that `ratchet init` builds under <home>/models/.",
    )
    demo_seed: int = Field(0, description="Seed of the demo model build (corpus, tokenizer, weights).")
    demo_steps: int = Field(
        600, ge=1, description="Pretraining steps of the demo model (more: a better model, a longer `ratchet init`)."
    )
    engine: Literal["hf", "vllm", "auto"] = Field(
        "hf", description="Inference engine: hf (transformers+PEFT), vllm, or auto (vLLM when CUDA and vLLM exist)."
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch threads of the hf engine; 0 = this machine's CPUs shared among the replicas "
        "(Ray would give a 1-CPU replica 1 thread, too few for a model whose decode steps are big enough to split).",
    )
    engine_process: bool = Field(
        True,
        description="hf engine: run the model and its decode loop in a child process of the replica, so the "
        "HTTP work does not share their GIL (which matters most on the demo model: docs/benchmarks.md).",
    )
    trust_remote_code: bool = Field(False, description="Allow model repos to run their own Python code on load.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype for serving: auto = float32 for hf, bfloat16 for vLLM on CPU."
    )
    max_batch_size: int = Field(32, ge=1, description="Most sequences decoded together by the hf engine.")
    packed_gemm: bool = Field(
        True,
        description="hf engine on CPU (float32, MKL): pack weights for batched decode steps (faster; a second "
        "copy of the weights in memory).",
    )
    max_adapters: int = Field(8, ge=1, description="Adapters kept loaded at once (least recently used go first).")
    max_lora_rank: int = Field(64, ge=1, description="Largest LoRA rank an adapter may have to be served.")
    max_model_len: int = Field(0, ge=0, description="Context length to serve; 0 = the model's own.")
    vllm_kv_cache_gib: float = Field(1.0, gt=0, description="vLLM on CPU: KV cache size in GiB.")

    # -- HTTP ---------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP server listens on.")
    max_concurrent_requests: int = Field(
        64, ge=1, description="Requests one replica runs at once; more are refused with 429 and Retry-After."
    )
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per chat request).")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none (capped by context).")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; bigger ones get 413.")
    num_cpus: float = Field(2.0, gt=0, description="CPUs for the local Ray cluster that `ratchet serve` starts.")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each serving replica.")
    replicas: int = Field(1, ge=1, description="Serving replicas.")
    ingress: Literal["haproxy", "proxy"] = Field(
        "haproxy",
        description="How HTTP reaches the replicas of the local Ray: haproxy = Ray Serve's HAProxy ingress "
        "straight to each replica's own port (no Python hop in between: more tokens/s, docs/benchmarks.md); "
        "proxy = Serve's Python proxy actor.",
    )
    access_log: bool = Field(
        True, description="Log one line per HTTP request from each replica (Ray Serve's access log)."
    )
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys to seed the key table with (chat, feedback, files, fine-tuning).",
    )
    feedback_group_commit: int = Field(
        256,
        ge=1,
        description="Most ratings and comparisons that concurrent requests commit in one shared transaction (each is "
        "acknowledged only after that commit). 1 = one commit per rating.",
    )
    feedback_rate_per_minute: int = Field(
        120,
        ge=0,
        description="Ratings and comparisons one user of one API key may post per minute, per replica (a minute's "
        "worth at once); more get 429 with Retry-After. 0 = no limit.",
    )
    feedback_key_rate_per_minute: int = Field(
        60_000,
        ge=0,
        description="Ratings and comparisons one API key (all its users; keyless callers count as one key) may post "
        "per minute, per replica. 0 = no limit.",
    )

    # -- evaluation and the gate ----------------------------------------------------------------
    judge: Literal["ratings", "llm"] = Field(
        "ratings",
        description="Pairwise judge: ratings (learned from stored feedback) or llm (an OpenAI-compatible API).",
    )
    judge_url: str = Field(
        "",
        description="LLM judge and score_model graders: base URL of an OpenAI-compatible API (e.g. http://host/v1); "
        "graders use ratchet's own API when empty.",
    )
    judge_model: str = Field("", description="LLM judge: the model name to ask.")
    judge_api_key: SecretStr = Field(SecretStr(""), description="LLM judge: its API key (never logged).")
    grader_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="python graders: wall-clock limit of one batch of answers (the sandbox)."
    )
    grader_memory_mb: int = Field(512, ge=64, le=65536, description="python graders: memory limit of the sandbox.")
    eval_prompts: int = Field(40, ge=1, description="Most prompts an offline evaluation samples answers for.")
    eval_samples: int = Field(2, ge=1, le=8, description="Sampled answers per prompt and model for the win-rate.")
    eval_temperature: float = Field(1.0, ge=0, le=2, description="Temperature of the win-rate samples.")
    eval_looks: int = Field(
        3,
        ge=1,
        le=5,
        description="Evaluations of one candidate at most: a close rejection earns another sample, pooled (the "
        "win-rate interval widens with the looks so a worse candidate gains no chance).",
    )
    gate_min_pairs: int = Field(20, ge=1, description="Gate: judged pairs (ties excluded) needed to decide.")
    gate_min_win_rate_low: float = Field(
        0.5, ge=0, lt=1, description="Gate: the win-rate's 95 % lower bound must exceed this."
    )
    gate_max_regressions: int = Field(0, ge=0, description="Gate: newly failing regression cases tolerated.")
    gate_regression_share: float = Field(
        0.05, ge=0, le=1, description="Gate: newly failing cases tolerated as a share of the suite, on top."
    )
    gate_quality_tolerance: float = Field(
        0.05, ge=0, le=1, description="Gate: how far the well-formed share may fall below the baseline's."
    )
    gate_quality_alpha: float = Field(
        0.05, gt=0, le=1, description="Gate: a quality drop past the tolerance fails when this significant."
    )
    gate_loss_tolerance: float = Field(
        0.10, ge=0, description="Gate: relative rise of the held-out loss tolerated (0.10 = 10 %)."
    )

    # -- the loop and the canary ----------------------------------------------------------------
    train_drop_disputed: bool = Field(
        True,
        description="Training sets built from the store leave out the thumbs and scores that a classifier "
        "fitted on the other ratings contradicts (likely flipped); imported rows, corrections and comparisons stay.",
    )
    loop_every_ratings: int = Field(30, ge=1, description="Loop: retrain after this many new ratings ...")
    loop_every_minutes: float = Field(
        60.0, ge=0, description="... or after this many minutes with at least one new rating (0 = never by time)."
    )
    loop_method: Literal["auto", "sft", "dpo", "kto", "rft", "best_of_n"] = Field(
        "auto",
        description="Loop: training method; auto = filtered SFT when there are good answers, else DPO, else KTO; "
        "rft = GRPO on the rated prompts, rewarded by the judge learned from the ratings; best_of_n = SFT on the "
        "liked answers plus, per rated prompt, the best of loop_best_of sampled answers by that judge.",
    )
    loop_best_of: int = Field(8, ge=2, le=64, description="Loop, best_of_n: answers sampled per rated prompt.")
    loop_grader: dict[str, Any] | None = Field(
        None,
        description="Loop, rft: an OpenAI grader (JSON) as the reward instead of the learned ratings judge; "
        'its item is {"messages": the rated prompt}, so it grades {{ sample.output_text }} alone.',
    )
    loop_epochs: Annotated[int, Field(ge=1, le=100)] | Literal["auto"] = Field(
        "auto",
        description="Loop: epochs per round; auto = OpenAI's rule (3, more for small sets: 11 good answers get 9; "
        "on the demo, 3 passes over so few barely moved the preference and more passes did: docs/dev-log.md).",
    )
    loop_learning_rate: float = Field(2e-3, gt=0, lt=1, description="Loop: learning rate per round (demo-sized).")
    loop_poll_seconds: float = Field(2.0, gt=0, description="Loop: how often it looks at the store.")
    canary_fraction: float = Field(
        0.2, ge=0, le=1, description="Share of `current` traffic a passing candidate takes first (0 = promote at once)."
    )
    canary_min_ratings: int = Field(20, ge=1, description="Canary: ratings per arm before any decision.")
    canary_max_ratings: int = Field(
        100, ge=1, description="Canary: ratings per arm after which it decides on the point estimate."
    )
    canary_margin: float = Field(
        0.05, ge=0, le=1, description="Canary: non-inferiority margin on the thumbs-up rate (0.05 = 5 points)."
    )
    canary_alpha: float = Field(0.05, gt=0, lt=1, description="Canary: significance level of Fisher's exact test.")
    keep_adapters: int = Field(
        3, ge=0, description="Adapters kept on disk besides current, previous and canary; older ones are pruned."
    )
    state_sync_seconds: float = Field(
        2.0,
        gt=0,
        description="How often each replica re-reads the serving state from the store without being rung "
        "(a change made by the replica handling a promotion reaches the others at once).",
    )
    state_push_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a promote, rollback or canary call waits for every replica to serve the new "
        "state; the ones still behind are named in its answer.",
    )

    # -- derived paths ------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.home / "ratchet.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def regression_dir(self) -> Path:
        return self.home / "regression"

    @property
    def admin_key_path(self) -> Path:
        return self.home / "admin.key"

    @property
    def demo_model_dir(self) -> Path:
        return self.models_dir / DEMO_MODEL_NAME

    @property
    def store_url(self) -> str:
        """The database URL actually used: `database_url`, else SQLite inside the workspace."""
        return self.database_url or f"sqlite:///{self.db_path.resolve()}"

    @property
    def base_model_path(self) -> str:
        """What to hand to `from_pretrained`: the configured base model, else the demo model dir."""
        return self.base_model or str(self.demo_model_dir)

    @property
    def base_model_id(self) -> str:
        """A short, stable name for the base model, recorded with every completion and adapter."""
        if not self.base_model:
            return DEMO_MODEL_NAME
        return Path(self.base_model).name if Path(self.base_model).exists() else self.base_model

    @property
    def seed_api_keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def with_home(self, home: Path | None) -> Settings:
        """A copy whose workspace is `home` (the CLI's --home), or this object when home is None."""
        return self if home is None else self.model_copy(update={"home": Path(home)})
