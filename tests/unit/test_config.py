import pytest

from cxrtriage.config import load_settings
from cxrtriage.errors import ConfigError


def test_operator_environment_names(monkeypatch, tmp_path):
    env = {"CXRTRIAGE_AE_TITLE": "TRIAGE1", "CXRTRIAGE_PORT": "4242",
           "CXRTRIAGE_STORAGE_DIR": str(tmp_path), "CXRTRIAGE_DATABASE_URL": "sqlite:///x.db",
           "CXRTRIAGE_BROKER_URL": "filesystem://", "CXRTRIAGE_SR_DESTINATION": "PACS@10.0.0.5:104",
           "CXRTRIAGE_STUDY_QUIET_SECONDS": "7.5", "CXRTRIAGE_MODEL": str(tmp_path / "pkg")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert (s.ae_title, s.port, s.study_quiet_seconds) == ("TRIAGE1", 4242, 7.5)
    assert (s.destination.ae_title, s.destination.host, s.destination.port) == ("PACS", "10.0.0.5", 104)
    assert s.model == tmp_path / "pkg"


def test_production_with_explicit_lists_starts(monkeypatch):
    for key, value in {"CXRTRIAGE_ENVIRONMENT": "production", "CXRTRIAGE_DATABASE_URL": "postgresql://h/db",
                       "CXRTRIAGE_BROKER_URL": "redis://r", "CXRTRIAGE_ALLOWED_CALLING_AES": "CT1,DX2",
                       "CXRTRIAGE_ALLOWED_PEERS": '["10.1.0.0/16"]'}.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert s.allowed_calling_aes == ["CT1", "DX2"] and s.allowed_peers == ["10.1.0.0/16"]


def test_toml_file_is_overridden_by_environment(monkeypatch, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cxrtriage]\nport = 5000\nae_title = "FROMFILE"\n')
    monkeypatch.setenv("CXRTRIAGE_PORT", "6000")
    s = load_settings(path)
    assert (s.port, s.ae_title) == (6000, "FROMFILE")


@pytest.mark.parametrize("env", [
    {"CXRTRIAGE_SR_DESTINATION": "no-port-here"},
    {"CXRTRIAGE_AE_TITLE": "A" * 17},
    {"CXRTRIAGE_ENVIRONMENT": "production"},  # development defaults refused in production
    {"CXRTRIAGE_ENVIRONMENT": "production", "CXRTRIAGE_DATABASE_URL": "postgresql://h/db"},
    {"CXRTRIAGE_ENVIRONMENT": "production", "CXRTRIAGE_DATABASE_URL": "postgresql://h/db",
     "CXRTRIAGE_BROKER_URL": "redis://r"},  # no explicit allow-lists
    {"CXRTRIAGE_ALLOWED_PEERS": "not-a-network"},
    {"CXRTRIAGE_TLS_CERTIFICATE": "/etc/cert.pem"},  # TLS needs certificate, key and CA
])
def test_invalid_settings_are_refused(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError):
        load_settings()
