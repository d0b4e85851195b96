"""The Serve config that ships, and the one `ratchet serve` generates, are valid Ray Serve deploy configs."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from ratchet.settings import Settings
from serving.deployment import APP_NAME, DEPLOYMENT_NAME, serve_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_serve_config_parses_and_names_the_app_builder():
    schema = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text()))
    app = schema.applications[0]
    assert app.name == APP_NAME and app.import_path == "serving.deployment:build"
    assert app.deployments[0].name == DEPLOYMENT_NAME
    assert app.deployments[0].user_config == {"state": {}}


def test_generated_config_carries_settings_state_and_limits(tmp_path):
    settings = Settings(home=tmp_path, port=8123, max_concurrent_requests=10, replicas=2)
    config = serve_config(settings, routers=["x.y:router"], state={"current": "ft-0001"})
    schema = ServeDeploySchema.model_validate(config)
    deployment = schema.applications[0].deployments[0]
    assert deployment.name == DEPLOYMENT_NAME and deployment.num_replicas == 2
    assert deployment.user_config == {"state": {"current": "ft-0001"}}
    assert schema.http_options.port == 8123
    args = schema.applications[0].args
    assert args["routers"] == ["x.y:router"] and args["settings"]["home"] == str(tmp_path.resolve())
