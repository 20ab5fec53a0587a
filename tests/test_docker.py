"""Docker, without a Docker engine: the image's entrypoint runs from a clean venv built the way
the Dockerfile builds it (wheel, venv, pip install) with the Dockerfile's environment; the
compose file's gateway settings are valid and point at its PostgreSQL service.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.settings import Settings
from tests.conftest import Upstream, free_port, wait_for_health

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instruction(name: str) -> list[str]:
    return re.findall(rf"^{name} (.+)$", DOCKERFILE, flags=re.MULTILINE)


def image_env(data: Path) -> dict[str, str]:
    """The Dockerfile's AGENTOPS_* environment, with its /data volume mapped to `data`."""
    env = dict(line.split("=", 1) for line in instruction("ENV"))
    return {k: v.replace("/data", str(data)) for k, v in env.items() if k.startswith("AGENTOPS_")}


def test_dockerfile_shape():
    assert instruction("FROM")[-1].startswith("python:3.12-slim")
    assert instruction("USER") == ["agentops"]
    assert json.loads(instruction("ENTRYPOINT")[0]) == ["agentops-studio", "serve"]
    (health,) = instruction("HEALTHCHECK")
    assert json.loads(health.split(" CMD ", 1)[1]) == ["agentops-studio", "healthcheck"]
    assert "/healthz" not in health  # the command knows the port from the environment
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_compose_gateway_settings_are_valid():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gateway, postgres = compose["services"]["gateway"], compose["services"]["postgres"]

    def resolve(value: str) -> str:  # ${X:?msg} must be given; ${X:-default}
        value = re.sub(r"\$\{AGENTOPS_UI_TOKEN:\?[^}]*\}", "token-from-the-user", value)
        return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)

    env = {k: resolve(str(v)) for k, v in gateway["environment"].items()}
    image = {k: v for k, v in image_env(Path("/data")).items() if k not in env}
    settings = Settings.build({}, {**image, **env})
    assert settings.ui_host == "0.0.0.0" and settings.ui_token == "token-from-the-user"
    pg = postgres["environment"]
    assert settings.db == (
        f"postgres://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{pg['POSTGRES_DB']}"
    )
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert {"pgdata", "agentops-data"} <= set(compose["volumes"])
    assert settings.wandb_project is None and settings.otel_endpoint is None


def test_compose_replicas_profile_behind_haproxy():
    """Profile `replicas`: N gateways with valid settings on the compose PostgreSQL, each
    with a spool of its own, behind HAProxy whose config (checked by haproxy itself when it
    is installed) sends both ports to them and health-checks /healthz."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    replica, balancer = services["gateway-replica"], services["balancer"]
    assert replica["profiles"] == ["replicas"] and balancer["profiles"] == ["replicas"]
    assert "profiles" not in services["gateway"]  # `docker compose up` is unchanged

    def resolve(value: str) -> str:
        value = re.sub(r"\$\{AGENTOPS_UI_TOKEN:\?[^}]*\}", "token-from-the-user", value)
        return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)

    env = {k: resolve(str(v)) for k, v in replica["environment"].items()}
    image = {k: v for k, v in image_env(Path("/data")).items() if k not in env}
    settings = Settings.build({}, {**image, **env})
    assert (
        settings.db
        == Settings.build(
            {},
            {
                **image,
                **{k: resolve(str(v)) for k, v in services["gateway"]["environment"].items()},
            },
        ).db
    )
    assert settings.workers >= 1 and "AGENTOPS_WORKERS" in env
    assert int(resolve(str(replica["deploy"]["replicas"]))) >= 2
    # One spool per replica: a shared folder would make all but one exit at start.
    assert not any("agentops-data" in str(v) for v in replica.get("volumes", []))
    assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert balancer["depends_on"] == ["gateway-replica"]
    (mount,) = balancer["volumes"]
    source, target = mount.split(":")[:2]
    config = ROOT / source
    assert config.is_file() and target == "/usr/local/etc/haproxy/haproxy.cfg"
    text = config.read_text()
    for port in ("8080", "8081"):
        assert f"bind :{port}" in text
        assert f"gateway-replica:{port}" in text
        assert f"127.0.0.1:{port}:{port}" in balancer["ports"]
    assert "option httpchk GET /healthz" in text and "check port 8081" in text
    assert "balance roundrobin" in text
    if shutil.which("haproxy"):
        checked = subprocess.run(
            ["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stderr


@pytest.mark.slow
async def test_image_entrypoint_from_a_clean_venv(
    upstream: Upstream, tmp_path: Path, installed_wheel: Path
):
    bin_dir = installed_wheel  # built as the Dockerfile does: wheel, venv, pip install
    entrypoint = json.loads(instruction("ENTRYPOINT")[0])
    data = tmp_path / "data"  # the image's WORKDIR and volume
    data.mkdir()
    env = {
        **image_env(data),
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "AGENTOPS_UPSTREAM": upstream.url,
        "AGENTOPS_PORT": str(free_port()),
        "AGENTOPS_UI_PORT": str(free_port()),
    }
    command = [str(bin_dir / entrypoint[0]), *entrypoint[1:]]

    refused = await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=data, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "without a token" in refused.stderr

    env["AGENTOPS_UI_TOKEN"] = "docker-token"
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=data, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    ui = f"http://127.0.0.1:{env['AGENTOPS_UI_PORT']}"
    try:
        await wait_for_health(ui, proc)
        health = json.loads(instruction("HEALTHCHECK")[0].split(" CMD ", 1)[1])
        checked = await asyncio.to_thread(
            subprocess.run,
            [str(bin_dir / health[0]), *health[1:]],
            env=env,
            cwd=data,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0 and '"status"' in checked.stdout
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{ui}/api/exchanges") as resp:
                assert resp.status == 401  # on 0.0.0.0, everything but /healthz needs it
            async with http.get(
                f"{ui}/api/exchanges", headers={"Authorization": "Bearer docker-token"}
            ) as resp:
                assert resp.status == 200
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert (data / "agentops.db").exists()
    unhealthy = await asyncio.to_thread(
        subprocess.run,
        [str(bin_dir / "agentops-studio"), "healthcheck"],
        env=env,
        cwd=data,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unhealthy.returncode == 1 and "unhealthy" in unhealthy.stderr
