"""The Serve config that ships, and the one `ratchet serve` generates, are valid Ray Serve deploy configs."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from deploy.app import IMPORT_PATH, build
from ratchet.settings import Settings
from serving.deployment import APP_NAME, DEPLOYMENT_NAME, serve_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_serve_config_parses_and_names_the_app_builder():
    schema = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text()))
    app = schema.applications[0]
    assert app.name == APP_NAME and app.import_path == IMPORT_PATH  # the full app's builder
    assert app.deployments[0].name == DEPLOYMENT_NAME
    assert app.deployments[0].user_config == {"state": {}}


def test_generated_config_carries_settings_state_and_limits(tmp_path):
    settings = Settings(home=tmp_path, port=8123, max_concurrent_requests=10, replicas=2)
    config = serve_config(settings, state={"current": "ft-0001"}, import_path=IMPORT_PATH)
    schema = ServeDeploySchema.model_validate(config)
    deployment = schema.applications[0].deployments[0]
    assert deployment.name == DEPLOYMENT_NAME and deployment.num_replicas == 2
    assert deployment.user_config == {"state": {"current": "ft-0001"}}
    assert schema.http_options.port == 8123
    args = schema.applications[0].args
    assert args["settings"]["home"] == str(tmp_path.resolve())
    assert schema.applications[0].import_path == IMPORT_PATH


def test_the_full_apps_builder_mounts_files_fine_tuning_and_admin_routes():
    from deploy.routes import routers

    paths = {route.path for router in routers() for route in router.routes}
    assert {"/v1/files", "/v1/fine_tuning/jobs", "/admin/promote", "/admin/rollback"} <= paths
    application = build({"settings": {}})
    assert application is not None


def test_kuberay_rayservice_embeds_a_valid_serve_config():
    manifest = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    schema = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    app = schema.applications[0]
    assert app.import_path == IMPORT_PATH and app.deployments[0].name == DEPLOYMENT_NAME
    assert app.deployments[0].ray_actor_options.num_gpus == 1
    cluster = manifest["spec"]["rayClusterConfig"]
    env = {e["name"] for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"RATCHET_HOME", "RATCHET_DATABASE_URL"} <= env  # Postgres across nodes, one shared workspace
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
