"""The loop: every N new ratings (or T minutes), retrain, evaluate, gate, canary, promote or roll back.

    loop = ImprovementLoop(settings, url, admin_key)
    loop.run_forever(stop_event)          # `ratchet loop` (against a running server), `ratchet up`, `demo`
    loop.tick()                           # one look at the store: what tests and the demo drive

One tick does one of:
1) a canary runs: count its live ratings per arm (deploy/canary.py) and promote it fully, roll it back,
   or wait;
2) enough new ratings: pick the method the data supports (or RATCHET_LOOP_METHOD; `rft` is reinforcement
   fine-tuning on the rated prompts with the learned ratings judge as its reward; `best_of_n` is SFT on the
   liked answers and the judge's pick of sampled ones, deploy/best_of_n.py), queue a fine-tuning
   job (the server's job runner trains it as a Ray task, at a lower priority than serving), evaluate the
   candidate through the server against `current` (eval/run.py), and when the gate passes start a canary
   (or promote at once when `canary_fraction` is 0);
3) nothing.
Every decision, and every failure with the stage it happened in, is recorded (store state `loop` and
the decision log); a failure never touches what is served. Ratings collected during a canary are
training data for the next round like any other.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from deploy.canary import arm_counts, decide
from deploy.promotion import record_decision
from feedback.store import FeedbackStore
from ratchet.settings import Settings

JOB_TIMEOUT_SECONDS = 1800.0
METHOD_MINIMUM = {"sft": 1, "dpo": 1, "kto": 2}


def check_loop_settings(settings: Settings) -> None:
    """RATCHET_LOOP_GRADER, when set, must be a valid OpenAI grader (GraderInvalid names the field), and
    best_of_n may not ask for more answers per request than the server gives."""
    if settings.loop_method == "best_of_n" and settings.loop_best_of > settings.max_n:
        raise ValueError(
            f"RATCHET_LOOP_BEST_OF={settings.loop_best_of} is more than RATCHET_MAX_N={settings.max_n}, the most "
            "answers a request may ask for: lower the one or raise the other"
        )
    if settings.loop_grader is not None:
        from retrain.graders import parse_grader

        parse_grader(settings.loop_grader, "RATCHET_LOOP_GRADER")


class AdminClient:
    """The admin API of a running server (promote, rollback, canary, status)."""

    def __init__(self, url: str, admin_key: str, timeout: float = 120.0) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=timeout)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        response = self.http.request(method, path, json=body)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except Exception:
                message = response.text[:200]
            raise RuntimeError(f"{method} {path}: {response.status_code} {message}")
        return response.json()

    def status(self) -> dict:
        return self._call("GET", "/admin/status")

    # `evidence`: the numbers behind the decision, recorded with it (deploy/promotion.py)
    def promote(self, adapter: str, *, reason: str, force: bool = False, evidence: dict | None = None) -> dict:
        body = {"adapter": adapter, "reason": reason, "force": force, "evidence": evidence}
        return self._call("POST", "/admin/promote", body)

    def rollback(self, *, reason: str, evidence: dict | None = None) -> dict:
        return self._call("POST", "/admin/rollback", {"reason": reason, "evidence": evidence})

    def canary(self, adapter: str, fraction: float, evidence: dict | None = None) -> dict:
        return self._call("POST", "/admin/canary", {"adapter": adapter, "fraction": fraction, "evidence": evidence})

    def abort_canary(self, *, reason: str, evidence: dict | None = None) -> dict:
        return self._call("POST", "/admin/canary/abort", {"reason": reason, "evidence": evidence})

    def close(self) -> None:
        self.http.close()


class ImprovementLoop:
    def __init__(self, settings: Settings, url: str, admin_key: str) -> None:
        from openai import OpenAI

        self.settings, self.url = settings, url
        self.store = FeedbackStore(settings.store_url)
        self.admin = AdminClient(url, admin_key)
        # a background job can wait: enough retries (with the SDK's backoff) to outlast an ingress that marks a
        # busy replica down for a few health checks while training and evaluation share its cores
        self.client = OpenAI(base_url=url + "/v1", api_key=admin_key, timeout=300, max_retries=6)
        self.state: dict[str, Any] = self.store.get_state("loop") or {}
        self.state.update(state="idle", promotions=self.state.get("promotions", 0), rounds=self.state.get("rounds", 0))
        self.state.setdefault("last_decision", None)  # the status contract always carries it
        self.state.setdefault("ratings_at_last_round", 0)
        self.state.setdefault("last_round_at", time.time())
        check_loop_settings(settings)  # a bad grader fails at start, not one round later
        self._save()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _save(self, **changes: Any) -> None:
        self.state.update(changes)
        self.store.set_state("loop", self.state)

    def _decide(self, decision: dict[str, Any]) -> dict[str, Any]:
        """Remember the decision as the loop's last; log it unless the admin route already logged the action."""
        decision = {"source": "loop", **decision}
        if decision["action"] in ("promote", "canary", "rollback"):
            decision = {"at": time.time(), **decision}
        else:
            decision = record_decision(self.store, decision)
        self._save(last_decision=decision)
        return decision

    # -- one look ------------------------------------------------------------------------------
    def tick(self) -> dict[str, Any] | None:
        """Do what is due now; returns the decision taken (None when there was nothing to do)."""
        stage = "status"
        try:
            status = self.admin.status()
            if status.get("canary"):
                stage = "canary"
                return self._judge_canary(status)
            new = self.store.rating_count() - int(self.state["ratings_at_last_round"])
            minutes = (time.time() - float(self.state["last_round_at"])) / 60
            by_time = self.settings.loop_every_minutes > 0 and minutes >= self.settings.loop_every_minutes
            if new >= self.settings.loop_every_ratings or (by_time and new > 0):
                return self._round(status)
            return None
        except Exception as error:  # recorded; serving is untouched, the next tick tries again
            return self._decide({"action": "failed", "stage": self.state.get("state", stage), "error": str(error)})
        finally:
            if self.state.get("state") != "canary":
                self._save(state="idle")

    def _judge_canary(self, status: dict[str, Any]) -> dict[str, Any] | None:
        canary = status["canary"]
        self._save(state="canary")
        verdict = decide(arm_counts(self.store, canary), self.settings)
        if verdict["action"] == "wait":
            self._save(canary_stats=verdict["stats"])
            return None
        adapter, reason, evidence = canary["adapter"], f"canary: {verdict['reason']}", {"canary": verdict["stats"]}
        if verdict["action"] == "promote":
            self.admin.promote(adapter, reason=reason, evidence=evidence)
            self._save(state="idle", promotions=int(self.state["promotions"]) + 1)
        else:
            self.admin.abort_canary(reason=reason, evidence=evidence)
            self._save(state="idle")
        return self._decide({"action": verdict["action"], "adapter": adapter, "reason": reason, "evidence": evidence})

    def _round(self, status: dict[str, Any]) -> dict[str, Any]:
        from eval.run import run_evaluation

        current = status.get("current") or "base"
        ratings = self.store.rating_count()
        self._save(
            state="training",
            ratings_at_last_round=ratings,
            last_round_at=time.time(),
            rounds=int(self.state["rounds"]) + 1,
        )
        # 1) train on everything users said so far
        method = self.pick_method()
        # SFT, RFT and best-of-n improve on what is served; DPO and KTO start afresh from the base each round
        parent = current if method in ("sft", "rft", "best_of_n") else "base"
        adapter, data = self._train_best_of_n(current) if method == "best_of_n" else (self._train(method, parent), {})
        # 2) evaluate through the server against what is served, and gate
        self._save(state="evaluating", candidate=adapter)
        outcome = run_evaluation(
            self.settings, self.store, self.client, adapter, current, seed=int(self.state["rounds"])
        )
        base = {
            "adapter": adapter,
            "method": method,
            "against": current,
            "ratings": ratings,
            "eval_id": outcome.id,
            **({"data": data} if data else {}),
            "reasons": outcome.decision.reasons,
            "evidence": {"gate": [{k: v for k, v in c.items() if k != "detail"} for c in outcome.decision.checks]},
            "report": str(outcome.report),
        }
        if outcome.decision.verdict != "promote":
            return self._decide({"action": "reject", **base})
        # 3) a passing candidate goes live: first as a canary, or at once
        if self.settings.canary_fraction > 0:
            self.admin.canary(adapter, self.settings.canary_fraction, evidence=base["evidence"])
            self._save(state="canary")
            return self._decide({"action": "canary", "fraction": self.settings.canary_fraction, **base})
        self.admin.promote(adapter, reason="the offline gate passed", evidence=base["evidence"])
        self._save(promotions=int(self.state["promotions"]) + 1)
        return self._decide({"action": "promote", **base})

    def pick_method(self) -> str:
        """The configured method, or (auto) filtered SFT when there are good answers, else DPO, else KTO."""
        if self.settings.loop_method != "auto":  # best_of_n is SFT on a judged file: its rows come later
            return self.settings.loop_method
        from feedback.datasets import build

        for method in ("sft", "dpo", "kto"):
            dataset = build(self.store.engine, method, drop_disputed=self.settings.train_drop_disputed)
            if len(dataset.train) >= METHOD_MINIMUM[method]:
                return method
        raise RuntimeError("no usable training data yet: no good answers, pairs or thumbs")

    def _grader(self) -> dict[str, Any]:
        """rft's reward: the configured grader, else the judge learned from the ratings so far (eval/judge.py)."""
        from eval.judge import RATINGS_REWARD

        return self.settings.loop_grader or {"type": RATINGS_REWARD, "name": "ratings"}

    def _train_best_of_n(self, current: str) -> tuple[str, dict[str, Any]]:
        """An SFT job on the users' rows plus the judge's best of n sampled answers (deploy/best_of_n.py)."""
        from deploy.best_of_n import best_of_n_rows, upload_rows

        seed = int(self.state["rounds"])
        drop = self.settings.train_drop_disputed
        rows, heldout, counts = best_of_n_rows(
            self.store, self.client, current, n=self.settings.loop_best_of, seed=seed, drop_disputed=drop
        )
        training = upload_rows(self.client, rows, f"best-of-n-round-{seed}.jsonl")
        validation = upload_rows(self.client, heldout, f"best-of-n-round-{seed}-heldout.jsonl") if heldout else None
        return self._train("sft", current, training_file=training, validation_file=validation), counts

    def _train(
        self, method: str, parent: str, *, training_file: str | None = None, validation_file: str | None = None
    ) -> str:
        from feedback.models import JobStatus
        from retrain.jobs import create_job, get_job

        job = create_job(
            self.store,
            self.settings,
            method=method,
            model=parent,
            training_file=training_file,
            validation_file=validation_file,
            suffix="loop",
            hyperparameters={"epochs": self.settings.loop_epochs, "learning_rate": self.settings.loop_learning_rate},
            seed=int(self.state["rounds"]),
            grader=self._grader() if method == "rft" else None,
        )
        self._save(job=job.id)
        deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
        while not JobStatus(job.status).finished:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fine-tuning job {job.id} did not finish in {JOB_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.5)
            job = get_job(self.store, job.id)
        if job.status != JobStatus.SUCCEEDED:
            reason = (job.error or {}).get("message", job.status)
            raise RuntimeError(f"fine-tuning job {job.id} {job.status}: {reason}")
        return job.fine_tuned_model

    # -- running ---------------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.tick()
            stop.wait(self.settings.loop_poll_seconds)
        self._save(state="stopped")

    def close(self) -> None:
        self.admin.close()
        self.client.close()
        self.store.close()
