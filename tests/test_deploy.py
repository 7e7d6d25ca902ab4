"""Deployments as users do them (docs/contract.md, "Layout"): a Heroku build (only
``pip install -r requirements.txt``, then the Procfile's lines from the repository root) against
Heroku Redis (TLS, self-signed); the installed package (``pip install .``) used from another
directory; the Heroku button's app.json; the container's files.

The two build tests make fresh virtualenvs (pip reads its cache: about 10 s each here); each runs
in one of CI's two passes, with the reason shown in the other."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import TEST_REDIS_URL, free_port
from tests.procs import Proc
from tests.tlsredis import TlsRedisServer

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ("release", "web", "worker", "backfill", "clock")
# Variables of this machine that would make a child process something other than a fresh deploy.
FOREIGN = (
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "DYNO",
    "REDIS_TLS_VERIFY",
    "DATABASE_URL",
    "REDIS_URL",
    "PORT",
    "JIRA_BASE_URL",
    "JIRA_EMAIL",
    "JIRA_API_TOKEN",
    "JIRA_OAUTH_TOKEN",
    "JIRA_CLOUD_ID",
    "JIRA_PROJECTS",
    "ADMIN_TOKEN",
    "WEB_CONCURRENCY",
    "LOG_LEVEL",
    "LOG_FORMAT",
)


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def fresh_venv(where: Path, *pip_args: str) -> Path:
    """A new virtualenv with ``pip install *pip_args``; returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    bin_dir = where / "bin"
    done = subprocess.run([str(bin_dir / "pip"), "install", "--quiet", *pip_args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return bin_dir


def deploy_env(bin_dir: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1", **values)
    return env


def wait_for(url: str, proc: Proc, *, headers: dict[str, str] | None = None, seconds: float = 30) -> requests.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            answer = requests.get(url, headers=headers, timeout=5)
            if answer.status_code == 200:
                return answer
        except requests.RequestException:
            pass
        assert proc.alive(), proc.output()
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200:\n{proc.output()}")


# --- the Heroku build, against Heroku Redis ---------------------------------------------------


needs_postgres = pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
    reason="runs in the PostgreSQL pass (TEST_DATABASE_URL): on Heroku (DYNO set) SQLite is refused by design",
)


@needs_postgres
def test_heroku_build_runs_every_procfile_line_against_heroku_redis(tmp_path: Path, database_url: str) -> None:
    """After exactly Heroku's build step, each Procfile line works from the repository root, with
    DYNO set and a rediss:// URL served with a self-signed certificate (as Heroku Redis does):
    release exits 0, web answers /healthz and /readyz (database and Redis over TLS), worker,
    backfill and clock stay up and exit 0 on SIGTERM; no output shows the Redis password."""
    bin_dir = fresh_venv(tmp_path / "venv", "-r", str(ROOT / "requirements.txt"))
    assert not (bin_dir / "jira-mirror").exists()  # the console script is not what the Procfile needs
    redis = TlsRedisServer(tmp_path, password="heroku-redis-pass-1234")
    redis.start()
    port = free_port()
    env = deploy_env(
        bin_dir,
        DYNO="web.1",
        DATABASE_URL=database_url,
        REDIS_URL=redis.url,
        PORT=str(port),
        WEB_CONCURRENCY="1",
        JIRA_WEBHOOK_SECRET="a-webhook-secret",
        ADMIN_TOKEN="an-admin-token-of-at-least-32-characters",
    )
    lines = procfile()
    assert set(lines) == set(PROCESSES)
    running: dict[str, Proc] = {}
    try:
        release = subprocess.run(
            ["sh", "-c", lines["release"]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert release.returncode == 0, release.stdout + release.stderr
        for name in ("web", "worker", "backfill", "clock"):
            running[name] = Proc(["sh", "-c", f"exec {lines[name]}"], env, tmp_path / f"{name}.log")
        wait_for(f"http://127.0.0.1:{port}/healthz", running["web"])
        ready = wait_for(f"http://127.0.0.1:{port}/readyz", running["web"], seconds=10)
        assert ready.status_code == 200
        # Both workers registered in Redis, through TLS: they are connected, not merely alive.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(redis.client().smembers("rq:workers")) < 2:
            time.sleep(0.2)
        assert len(redis.client().smembers("rq:workers")) == 2
        time.sleep(1)
        for name, proc in running.items():
            assert proc.alive(), f"{name} exited:\n{proc.output()}"
        codes = {name: proc.terminate(timeout=30) for name, proc in running.items()}
        assert codes == {name: 0 for name in running}, {n: p.output()[-2000:] for n, p in running.items()}
        for name, proc in running.items():
            output = proc.output()
            assert "heroku-redis-pass-1234" not in output, name
            assert "Traceback" not in output, f"{name}:\n{output}"
        for name in ("web", "worker", "backfill", "clock"):  # each says which Redis and how, password masked
            assert "tls=unverified (Heroku (DYNO set))" in running[name].output(), running[name].output()
    finally:
        for proc in running.values():
            proc.kill()
        redis.stop()


def test_self_signed_redis_is_refused_off_heroku_with_a_clear_message(tmp_path: Path) -> None:
    """Without DYNO and without REDIS_TLS_VERIFY the certificate is verified, and refused with a
    message saying why and what to set; REDIS_TLS_VERIFY=0 accepts it."""
    from click.testing import CliRunner

    from jira_mirror_cli import main

    redis = TlsRedisServer(tmp_path, password="off-heroku-pass-5678")
    redis.start()
    try:
        env = {"REDIS_URL": redis.url, "DYNO": None, "REDIS_TLS_VERIFY": None}
        refused = CliRunner().invoke(main, ["failed", "list", "--json"], env=env)
        assert refused.exit_code == 1
        assert "CERTIFICATE_VERIFY_FAILED" in refused.output
        assert "REDIS_TLS_VERIFY=0" in refused.output
        assert f"rediss://***@127.0.0.1:{redis.port}/0" in refused.output
        assert "off-heroku-pass-5678" not in refused.output
        accepted = CliRunner().invoke(main, ["failed", "list", "--json"], env={**env, "REDIS_TLS_VERIFY": "0"})
        assert accepted.exit_code == 0, accepted.output
        assert json.loads(accepted.output) == []
    finally:
        redis.stop()


@pytest.mark.parametrize(
    "command",
    [
        ["python", "-m", "jira_mirror_cli", "worker"],
        ["gunicorn", "--config", "gunicorn.conf.py", "receiver:create_app()"],
    ],
)
def test_sqlite_on_heroku_stops_the_process_with_a_clear_message(command: list[str]) -> None:
    bin_dir = Path(sys.executable).parent
    env = deploy_env(bin_dir, DYNO="worker.1", REDIS_URL=TEST_REDIS_URL, PORT=str(free_port()))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "each dyno would get its own SQLite file" in done.stdout + done.stderr


# --- the installed package ---------------------------------------------------------------------


@pytest.mark.skipif(
    os.environ.get("TEST_DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
    reason="runs in the SQLite pass: what `pip install .` ships does not depend on the database (the "
    "PostgreSQL pass builds the Heroku virtualenv instead: one fresh virtualenv per pass)",
)
def test_installed_package_works_from_another_directory(tmp_path: Path, database_url: str, redis_conn: object) -> None:
    """``pip install .`` in a fresh virtualenv: only the product's packages land in
    site-packages; from another directory the CLI works, ``db upgrade`` runs, and the status page
    and every static file it links are served."""
    source = tmp_path / "src"  # a copy: no stale build/ of this checkout can leak into the wheel
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "*.db", ".pytest_cache"),
    )
    bin_dir = fresh_venv(tmp_path / "venv", str(source))
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    installed = {p.name for p in site.iterdir()}
    assert {"mirror", "receiver", "workers", "backfill", "jira_mirror_cli"} <= installed
    assert not {"cli", "benchmarks", "simulator", "tests", "scripts"} & installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    env = deploy_env(
        bin_dir,
        DATABASE_URL=database_url,
        REDIS_URL=TEST_REDIS_URL,
        ADMIN_TOKEN="installed-token-1-of-at-least-32-chars",
        PORT=str(port),
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir / "jira-mirror"), *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
        )

    upgraded = cli("db", "upgrade")
    assert upgraded.returncode == 0 and "schema" in upgraded.stdout, upgraded.stdout + upgraded.stderr
    listed = cli("projects", "list")
    assert listed.returncode == 0, listed.stderr
    simulate = cli("simulate")
    assert simulate.returncode == 1 and "development tool" in simulate.stderr
    web = Proc(
        [str(bin_dir / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "receiver:create_app()"],
        env,
        tmp_path / "web.log",
        cwd=elsewhere,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        page = wait_for(base + "/", web, headers={"Authorization": "Bearer installed-token-1-of-at-least-32-chars"})
        assert "Jira connection" in page.text
        login = requests.get(base + "/login", timeout=5)
        links = set(re.findall(r'(?:href|src)="(/static/[^"]+)"', page.text + login.text))
        assert links, "the status page links no static file"
        for link in links:
            answer = requests.get(base + link, timeout=5)
            assert answer.status_code == 200 and answer.content, link
    finally:
        web.terminate()


# --- the Heroku button and the container -------------------------------------------------------


# The top-level keys of Heroku's app.json schema (https://devcenter.heroku.com/articles/app-json-schema),
# and those of an `env` entry.
APP_JSON_KEYS = {
    "name",
    "description",
    "keywords",
    "website",
    "repository",
    "logo",
    "success_url",
    "scripts",
    "env",
    "formation",
    "image",
    "addons",
    "buildpacks",
    "environments",
    "stack",
}
ENV_KEYS = {"description", "value", "required", "generator"}


def test_app_json_describes_every_process_the_add_ons_and_the_environment() -> None:
    app = json.loads((ROOT / "app.json").read_text())
    assert set(app) <= APP_JSON_KEYS
    assert 3 <= len(app["name"]) <= 30
    assert set(app["formation"]) == set(procfile()) - {"release"}
    for process in app["formation"].values():
        assert set(process) <= {"quantity", "size"} and process["quantity"] >= 1
    plans = [a if isinstance(a, str) else a["plan"] for a in app["addons"]]
    assert {p.split(":")[0] for p in plans} == {"heroku-postgresql", "heroku-redis"}
    env = app["env"]
    for name, entry in env.items():
        assert isinstance(entry, str) or (set(entry) <= ENV_KEYS and entry.get("description")), name
    for name in ("JIRA_WEBHOOK_SECRET", "ADMIN_TOKEN"):
        assert env[name]["generator"] == "secret"
    for name in ("JIRA_BASE_URL", "JIRA_EMAIL", "JIRA_API_TOKEN"):
        assert env[name]["required"] is True
    version = (ROOT / ".python-version").read_text().strip()
    assert version == f"{sys.version_info.major}.{sys.version_info.minor}"  # the version the suite runs on


def test_compose_file_runs_every_procfile_process_with_its_services() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in procfile():  # each process, run by name through the image's entrypoint
        assert services[name]["command"] == [name]
        assert services[name]["build"] == "."
    assert {"postgres", "redis", "simulator"} <= set(services)
    app_env = services["web"]["environment"]
    assert app_env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in app_env["DATABASE_URL"]
    assert app_env["REDIS_URL"].startswith("redis://redis:")
    assert app_env["JIRA_BASE_URL"] == "http://simulator:8081"
    simulator = services["simulator"]["command"]
    assert simulator[simulator.index("--webhook-url") + 1] == "http://web:8000/webhooks/jira"
    assert services["web"]["ports"] == ["8000:8000"]
    assert services["web"]["depends_on"]["release"] == {"condition": "service_completed_successfully"}


def test_dockerfile_is_small_non_root_and_uses_the_entrypoint() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert re.fullmatch(r"FROM python:3\.11-slim", lines[0])
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    entrypoint = json.loads(next(line for line in lines if line.startswith("ENTRYPOINT"))[len("ENTRYPOINT") :])
    assert (ROOT / entrypoint[0]).is_file() and os.access(ROOT / entrypoint[0], os.X_OK)
    for line in lines:
        if line.startswith("COPY ") and not line.startswith("COPY . "):
            for path in shlex.split(line)[1:-1]:
                assert (ROOT / path).exists(), path
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "benchmarks"} <= set(ignored)


def test_entrypoint_runs_procfile_processes_by_name(tmp_path: Path, database_url: str, redis_conn: object) -> None:
    """The image's entrypoint, run here: ``release`` upgrades the schema, ``web`` serves, SIGTERM
    stops it cleanly, and an unknown name lists the Procfile's processes."""
    entrypoint = str(ROOT / "scripts" / "docker-entrypoint.sh")
    port = free_port()
    env = deploy_env(
        Path(sys.executable).parent,
        DATABASE_URL=database_url,
        REDIS_URL=TEST_REDIS_URL,
        PORT=str(port),
        WEB_CONCURRENCY="1",
    )
    release = subprocess.run([entrypoint, "release"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert release.returncode == 0 and "schema" in release.stdout, release.stdout + release.stderr
    unknown = subprocess.run([entrypoint, "nope"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert unknown.returncode == 64
    assert all(name in unknown.stderr for name in PROCESSES), unknown.stderr
    web = Proc([entrypoint, "web"], env, tmp_path / "web.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", web)
        web.popen.send_signal(signal.SIGTERM)
        assert web.popen.wait(30) == 0
    finally:
        web.kill()
