"""The built wheel works on its own: templates, static files, migrations and the price table
ship inside it, and the installed UI renders pages.

Builds the wheel, installs it with --no-deps into a fresh venv (dependencies are borrowed from
the test environment through a .pth line, so nothing is downloaded), and runs the installed
`agentops-studio serve` from a folder outside the checkout.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Upstream, free_port, wait_for_health

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("agentops_studio-*.whl")
    return wheel


def install(wheel: Path, where: Path) -> Path:
    venv.EnvBuilder(with_pip=False, system_site_packages=True).create(where)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    deps = sysconfig.get_paths()["purelib"]  # the test environment's packages
    (Path(site.stdout.strip()) / "borrowed-deps.pth").write_text(deps + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        check=True,
    )
    return where / "bin"


@pytest.mark.slow
async def test_wheel_installs_and_serves(upstream: Upstream, tmp_path: Path, installed_wheel: Path):
    bin_dir = installed_wheel
    where = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            "import gateway, webui; print(gateway.__file__, webui.__file__)",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(bin_dir.parent) in where and str(ROOT) not in where
    templates = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            "from webui.render import template_dir; print(template_dir())",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert templates.startswith(str(bin_dir.parent)) and templates.endswith(
        "webui/templates"
    )  # the wheel's own copy, not the checkout's

    port, ui_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        str(bin_dir / "agentops-studio"),
        "serve",
        "--upstream",
        upstream.url,
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_health(f"http://127.0.0.1:{ui_port}", proc)
        async with aiohttp.ClientSession() as http:
            payload = {
                "model": "mistral-small-latest",
                "messages": [{"role": "user", "content": "from the wheel"}],
            }
            async with http.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=payload,
                headers={"Authorization": "Bearer k"},
            ) as resp:
                assert resp.status == 200
            ui = f"http://127.0.0.1:{ui_port}"
            deadline = asyncio.get_running_loop().time() + 15
            page = ""
            while "from the wheel" not in page:  # the call just made, once it is written
                assert asyncio.get_running_loop().time() < deadline, page[-2000:]
                async with http.get(f"{ui}/") as resp:
                    page = await resp.text()
                    assert resp.status == 200 and "AgentOps Studio" in page
                await asyncio.sleep(0.05)
            for path in (
                "/dashboard",
                "/runs",
                "/prices",
                "/static/vendor/htmx.min.js",
                "/static/vendor/chart.umd.min.js",
                "/static/app.css",
            ):
                async with http.get(ui + path) as resp:
                    assert resp.status == 200, path
            async with http.get(f"http://127.0.0.1:{ui_port}/api/prices") as resp:
                assert (await resp.json())["models"]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert (tmp_path / "agentops.db").exists()  # the default database, in the working dir
