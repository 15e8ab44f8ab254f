"""The deploy files cannot be started here (no Docker), so they are checked against the code:
every CXRTRIAGE_* variable they set is a setting, production's required settings are present and
valid, no password is written in them, the systemd units pass `systemd-analyze verify` with
ExecStart pointing at an installed cxrtriage, and the dashboard queries metrics that exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from cxrtriage.config import Settings, load_settings
from cxrtriage.worker.monitoring import ReceiverMetrics, SchedulerMetrics, WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
NOT_SETTINGS = {"CXRTRIAGE_CONFIG"}  # names the settings file; read by load_settings
PENDING = {"CXRTRIAGE_WEB_HOST", "CXRTRIAGE_WEB_PORT"}  # the review app's; tolerated until merged
INSTALLED_ON_DEPLOY = "/opt/cxrtriage/venv/bin/cxrtriage"


def _field(variable: str) -> str:
    return variable.removeprefix("CXRTRIAGE_").lower()


def _check_names(variables: set[str], where: str) -> None:
    for variable in variables - NOT_SETTINGS:
        if variable in PENDING and _field(variable) not in Settings.model_fields:
            continue
        assert _field(variable) in Settings.model_fields, f"{where} sets {variable}, which is no setting"


def _env_example() -> dict[str, str]:
    lines = (DEPLOY / "cxrtriage.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                   config: Path | None = None) -> Settings:
    """Settings exactly as a process started with this environment would load them."""
    for name in [k for k in os.environ if k.startswith("CXRTRIAGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name in PENDING and _field(name) not in Settings.model_fields:
            continue
        monkeypatch.setenv(name, str(value))
    return load_settings(config)


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def _cxrtriage_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _compose()["services"].items()
            if str(svc.get("image", "")).startswith("cxrtriage")}


def test_compose_runs_every_part_on_images_built_from_the_wheel() -> None:
    services = _cxrtriage_services()
    assert {"receiver", "worker", "web", "migrate"} <= set(services)
    assert services["receiver"]["command"] == ["receiver"]
    assert services["worker"]["command"][:3] == ["worker", "--pool", "solo"]
    assert services["web"]["command"] == ["web"]
    for name, svc in services.items():  # build context: the repository root, seen from deploy/
        assert (DEPLOY / svc["build"]["context"]).resolve() == REPO
        assert (REPO / svc["build"]["dockerfile"]).is_file(), f"{name}: {svc['build']['dockerfile']} missing"


@pytest.mark.parametrize("service", ["receiver", "worker", "web", "migrate"])
def test_compose_settings_exist_and_satisfy_production(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _cxrtriage_services()[service]
    env = {**_env_example(), **{k: str(v) for k, v in svc["environment"].items()}}
    _check_names(set(env), f"compose service {service}")
    settings = _settings_from(env, monkeypatch)
    assert settings.environment == "production"
    assert settings.allowed_calling_aes and settings.allowed_peers
    assert settings.database_url.startswith("postgresql") and settings.broker_url.startswith("redis://:")


def test_compose_writes_no_secret() -> None:
    compose = _compose()
    text = "\n".join(line.split(" #")[0] for line in (DEPLOY / "compose.yaml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    assert "POSTGRES_PASSWORD:" not in text and "change-me" not in text.lower() and "@db" not in text
    for svc in compose["services"].values():
        for name in svc.get("environment", {}):
            assert name not in {"CXRTRIAGE_DATABASE_URL", "CXRTRIAGE_BROKER_URL", "POSTGRES_PASSWORD"}, (
                "URLs with passwords belong in the env file")
    assert compose["services"]["db"]["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    redis = " ".join(compose["services"]["redis"]["command"])
    for option in ("--requirepass", "/run/secrets/redis_password", "--appendonly yes",
                   "--maxmemory-policy noeviction"):
        assert option in redis
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "deploy/cxrtriage.env" in ignored and "deploy/secrets/" in ignored
    assert all("CHANGE-ME" in value for value in _env_example().values())


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_install_the_wheel(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text()
    assert re.search(r"pip wheel --no-deps", text) and re.search(r"pip install .*cxrtriage-\*\.whl", text)
    assert 'ENTRYPOINT ["cxrtriage"]' in text and "USER cxrtriage" in text
    _check_names(set(re.findall(r"\b(CXRTRIAGE_[A-Z_]+)=", text)), dockerfile)


def test_systemd_settings_exist_and_satisfy_production(monkeypatch: pytest.MonkeyPatch) -> None:
    config = DEPLOY / "production.toml"
    keys = set(tomllib.loads(config.read_text())["cxrtriage"])
    assert keys <= set(Settings.model_fields), f"production.toml: unknown {keys - set(Settings.model_fields)}"
    for unit in UNITS:
        text = unit.read_text()
        env = dict(re.findall(r"^Environment=(CXRTRIAGE_[A-Z_]+)=(.*)$", text, re.M))
        _check_names(set(env), unit.name)
        assert "EnvironmentFile=/etc/cxrtriage/cxrtriage.env" in text
        settings = _settings_from({**_env_example(), **env}, monkeypatch, config)
        assert settings.environment == "production" and settings.allowed_calling_aes


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="make system-deps installs systemd")
def test_systemd_units_verify(tmp_path: Path) -> None:
    installed = Path(sys.executable).parent / "cxrtriage"
    assert installed.is_file(), "the cxrtriage command of this environment"
    paths = []
    for unit in UNITS:
        text = unit.read_text()
        assert INSTALLED_ON_DEPLOY in text
        name = unit.name.replace("@.service", "@9111.service")  # an instance of the template
        target = tmp_path / name
        target.write_text(text.replace(INSTALLED_ON_DEPLOY, str(installed)))
        paths.append(str(target))
    result = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True,
                            timeout=120)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "cxrtriage" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_systemd_verify_catches_a_missing_executable(tmp_path: Path) -> None:
    """The check above can fail: the units as shipped point at /opt, which is not installed here."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("make system-deps installs systemd")
    unit = tmp_path / "cxrtriage-receiver.service"
    unit.write_text((DEPLOY / "systemd" / "cxrtriage-receiver.service").read_text())
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "not executable" in result.stderr


def _metric_names() -> set[str]:
    """Every sample name the three processes can expose (labelled ones have no sample yet)."""
    registry = CollectorRegistry()
    for kind in (ReceiverMetrics, WorkerMetrics, SchedulerMetrics):
        kind(registry, Path("."))
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def test_dashboard_and_scrape_config_refer_to_metrics_that_exist() -> None:
    names = _metric_names()
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {n for expr in exprs for n in re.findall(r"\b(cxrtriage_[a-z_]+)", expr)}
    assert used and used <= names, f"unknown metrics: {used - names}"
    for topic in ("received", "refused", "associations_open", "queue_depth", "processing_seconds",
                  "latency", "export_attempts", "images_classified", "free_bytes"):
        assert any(topic in n for n in used), f"no panel for {topic}"
    prometheus = yaml.safe_load((DEPLOY / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert {"cxrtriage-receiver", "cxrtriage-worker", "cxrtriage-scheduler", "cxrtriage-web"} <= jobs
