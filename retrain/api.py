"""The OpenAI files and fine-tuning API, as one router that deploy/ mounts on serving's app.

`retrain.api:router` is named in deploy/server.py's EXTRA_ROUTERS and imported inside each serving
replica (serving never imports retrain). Files: retrain/api_files.py; jobs: retrain/api_jobs.py. Both use
serving's API-key dependency and OpenAI's error shape, so the official `openai` SDK works unchanged:

    client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
    client.fine_tuning.jobs.create(training_file=file.id, model="base", method={"type": "supervised"})
"""

from __future__ import annotations

from fastapi import APIRouter

from retrain import api_files, api_jobs

router = APIRouter(tags=["fine-tuning"])
router.include_router(api_files.router)
router.include_router(api_jobs.router)
