"""One typed settings object, read from CXRTRIAGE_* environment variables and an optional TOML file.

Loaded once by the entry point and passed down; library code never reads the environment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cxrtriage.errors import ConfigError

BUNDLED_MODEL = Path(__file__).parent / "bundled" / "pneumonia-resnet18"
_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")
HeatmapObject = Literal["secondary-capture", "segmentation"]
HEATMAP_OBJECTS: tuple[HeatmapObject, ...] = ("secondary-capture", "segmentation")


class Destination:
    """A DICOM peer written `AE@host:port`."""

    def __init__(self, text: str) -> None:
        match = _DESTINATION.match(text.strip())
        if not match:
            raise ConfigError(f"CXRTRIAGE_SR_DESTINATION must look like AE@host:port, got {text!r}")
        self.ae_title = match["ae"]
        self.host = match["host"]
        self.port = int(match["port"])

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXRTRIAGE_", extra="forbid")

    environment: Literal["development", "production"] = "development"
    ae_title: str = "CXRTRIAGE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    storage_dir: Path = Path("var/storage")
    database_url: str = "sqlite:///var/cxrtriage.db"
    broker_url: str = "filesystem://"
    broker_dir: Path = Path("var/broker")
    sr_destination: str = ""
    sr_calling_ae: str = "CXRTRIAGE"
    sr_max_attempts: int = Field(0, ge=0)  # 0: no attempt cap, the retry horizon alone decides
    sr_retry_base_seconds: float = Field(5.0, gt=0)
    sr_retry_max_interval_seconds: float = Field(300.0, gt=0)  # backoff cap between attempts
    sr_retry_horizon_seconds: float = Field(3 * 86400.0, gt=0)  # then the export is failed
    sr_connect_timeout_seconds: float = Field(10.0, gt=0)  # TCP connect (and TLS handshake)
    sr_send_deadline_seconds: float = Field(120.0, gt=0)  # one whole attempt, connect to release
    study_quiet_seconds: float = Field(10.0, ge=0)
    processing_lease_seconds: float = Field(300.0, gt=0)
    study_max_attempts: int = Field(3, ge=1)  # then the study gets a "not analysed" SR
    batch_studies: int = Field(8, ge=1)  # ready studies a worker classifies in one forward pass
    batch_wait_seconds: float = Field(0.0, ge=0)  # wait this long for a batch to fill (GPU bulk work)
    decode_processes: int = Field(2, ge=0)  # a worker's image-decoding processes (0: one, as 1)
    # Hostile pixels (docs/security.md): decoding runs only in child processes under these limits.
    max_decoded_bytes: int = Field(256 * 1024 * 1024, gt=0)  # rows x cols x samples x bits x frames
    decode_memory_bytes: int = Field(2 * 1024**3, ge=256 * 1024**2)  # each child's RLIMIT_AS
    decode_timeout_seconds: float = Field(30.0, gt=0)  # one file's decode; then the child is killed
    # CT, MR and other non-radiograph studies get a recorded reason; an SR only if asked for.
    sr_for_non_radiograph_studies: bool = False
    sweep_interval_seconds: float = Field(1.0, gt=0)
    model: Path = BUNDLED_MODEL
    heatmaps: bool = True  # heat maps per classified image, sent with the SR (false: none at all)
    # Which heat map objects: "secondary-capture" (a picture every viewer shows) and/or
    # "segmentation" (the map as data over the image: a fractional SEG for OHIF, Slicer, ...).
    heatmap_objects: Annotated[list[HeatmapObject], NoDecode] = Field(
        default_factory=lambda: list(HEATMAP_OBJECTS))
    max_instance_bytes: int = Field(256 * 1024 * 1024, gt=0)
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: any
    allowed_peers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    max_associations: int = Field(10, ge=1)
    max_associations_per_peer: int = Field(5, ge=1)  # of them from one address
    # Hostile peers (docs/security.md): what a connection may cost before it is cut off.
    max_pending_connections: int = Field(20, ge=1)  # connected, not yet associated, from all peers
    max_pending_per_peer: int = Field(4, ge=1)  # ... and from any one address
    max_associate_rq_bytes: int = Field(65536, ge=1024)  # an A-ASSOCIATE-RQ PDU
    pdu_timeout: float = Field(60.0, gt=0)  # a whole PDU, from its first byte
    negotiation_timeout: float = Field(10.0, gt=0)  # the A-ASSOCIATE-RQ, from its first byte
    max_association_hold_seconds: float = Field(3600.0, gt=0)  # then it no longer holds its studies
    ae_title_aliases: Annotated[list[str], NoDecode] = Field(default_factory=list)  # called AEs we answer
    # With TLS, optional: `AE=name` entries; the AE title may be claimed only by a certificate
    # whose subject CN or a SAN (DNS or URI) is one of its names.
    tls_peer_identities: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # fewer, larger PDUs: ~20% faster ingest than 16 KB; bounded, since pynetdicom reads a whole PDU
    max_pdu_size: int = Field(262144, ge=4096, le=16 * 1024 * 1024)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(30.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    tls_certificate: Path | None = None  # receiver's certificate (PEM); with key and CA, TLS is on
    tls_key: Path | None = None
    tls_ca: Path | None = None  # CA that signs allowed clients and the SR destination
    sr_tls: bool = False
    tls_required: bool = True  # production: the receiver refuses to listen without TLS unless false
    receiver_id: str = ""  # owner of this receiver's association rows; default host:port
    # Receiver processes sharing the port (SO_REUSEPORT) in `serve`; the association and total
    # pending-connection limits are split among them, so the totals stay what the settings say
    # (the per-address one is not: cli/serving.py).
    receiver_processes: int = Field(1, ge=1, le=64)
    # Study worker processes in `serve`: while one writes its batch's SRs and heat maps (Python,
    # one core), another decodes and classifies. Each gets an equal share of the cores for torch.
    worker_processes: int = Field(1, ge=1, le=64)
    association_liveness_seconds: float = Field(300.0, gt=0)  # rows of a dead receiver expire
    min_free_bytes: int = Field(1024**3, ge=0)  # refuse new instances (0xA700) below this
    max_disk_used_percent: float = Field(90.0, gt=0, le=100)  # ... or above this
    retention_days: int = Field(0, ge=0)  # 0: keep image files for ever
    # Refused payloads (storage_dir/rejected/) hold patient data too: removed after this; 0 keeps them.
    quarantine_retention_days: int = Field(30, ge=0)
    # PostgreSQL roles (docs/database-roles.md): `cxrtriage db upgrade` migrates as this owner role
    # and grants the service role (CXRTRIAGE_DATABASE_URL's user, or the one named) only what the
    # services need: on audit_log, INSERT and SELECT. Empty: migrations use CXRTRIAGE_DATABASE_URL.
    migration_database_url: str = ""
    database_service_role: str = ""
    export_concurrency: int = Field(4, ge=1)  # threads of the export worker in `serve`
    worker_concurrency: int = Field(1, ge=1)
    nightly_reprocess_hour: int = Field(-1, ge=-1, le=23)  # local hour; -1 turns the nightly job off
    # Operations (issue 12). Metrics: a prometheus-client endpoint per process; 0 turns it off.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    reprocess_rate_per_second: float = Field(2.0, gt=0)  # bulk reprocessing: studies queued per second
    reprocess_max_queued: int = Field(4, ge=0)  # ...and held back while this many are queued (0: no cap)
    broker_visibility_timeout_seconds: float = Field(7200.0, gt=0)  # Redis: > the longest task
    log_format: Literal["json", "text"] = "json"
    # review app (cxrtriage web)
    web_host: str = "127.0.0.1"
    web_port: int = Field(8080, ge=1, le=65535)
    web_viewer_url: str = ""  # e.g. https://pacs/viewer?StudyInstanceUIDs={study_uid}
    web_escalation_minutes: float = Field(120.0, gt=0)  # unreviewed this long: moves up the worklist
    web_session_hours: float = Field(12.0, gt=0)
    web_login_attempts: int = Field(5, ge=1)  # failed sign-ins per (name, address) pair ...
    web_login_window_seconds: float = Field(300.0, gt=0)  # ... within this window
    web_forwarded_allow_ips: str = "127.0.0.1"  # reverse proxies trusted for X-Forwarded-Proto/For
    web_max_upload_bytes: int = Field(64 * 1024 * 1024, gt=0)
    web_assessment_sr: bool = False  # each verdict also goes to the PACS as an assessment SR (AIRA-like)
    # Hostile browsers and scripts (issue 17): every limit is checked on what arrives.
    web_max_body_bytes: int = Field(1024 * 1024, gt=0)  # any request body but "try an image" (413)
    web_login_address_attempts: int = Field(0, ge=0)  # failures from one address, any name; 0: as above
    web_login_global_attempts: int = Field(50, ge=1)  # failures from everywhere in the window: then ...
    web_login_slowdown_seconds: float = Field(1.0, ge=0)  # ... failing addresses wait this long, in turn
    web_password_checks: int = Field(1, ge=1)  # argon2 verifications at once (4 lanes, 64 MiB each)
    web_tls_certificate: Path | None = None  # PEM; with the key, uvicorn itself serves HTTPS
    web_tls_key: Path | None = None
    web_tls_proxy: bool = False  # a TLS reverse proxy is the only way in (it sets X-Forwarded-Proto)
    web_hsts_seconds: int = Field(31536000, ge=0)  # Strict-Transport-Security max-age on HTTPS; 0: off
    log_level: str = "INFO"

    @field_validator("ae_title", "sr_calling_ae")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        if not 1 <= len(value) <= 16 or "\\" in value or not value.isprintable():
            raise ValueError("an AE title is 1-16 printable characters without backslash")
        return value

    @field_validator("allowed_calling_aes", "allowed_peers", "ae_title_aliases", "tls_peer_identities",
                     "heatmap_objects", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        """Accept `A,B` as well as a JSON list, so operators can write either."""
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("heatmap_objects")
    @classmethod
    def _check_heatmap_objects(cls, value: list[HeatmapObject]) -> list[HeatmapObject]:
        if not value:
            raise ValueError("CXRTRIAGE_HEATMAP_OBJECTS names secondary-capture, segmentation or both; "
                             "CXRTRIAGE_HEATMAPS=false turns heat maps off")
        return list(dict.fromkeys(value))

    @field_validator("allowed_peers")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    @field_validator("tls_peer_identities")
    @classmethod
    def _check_identities(cls, value: list[str]) -> list[str]:
        for entry in value:
            ae, sep, name = entry.partition("=")
            if not sep or not ae.strip() or not name.strip():
                raise ValueError("CXRTRIAGE_TLS_PEER_IDENTITIES entries look like AE=name")
        return value

    @property
    def tls_identities(self) -> dict[str, tuple[str, ...]]:
        """For each calling AE title, the certificate names that may claim it."""
        names: dict[str, tuple[str, ...]] = {}
        for entry in self.tls_peer_identities:
            ae, _, name = entry.partition("=")
            names[ae.strip()] = (*names.get(ae.strip(), ()), name.strip())
        return names

    @field_validator("sr_destination")
    @classmethod
    def _check_destination(cls, value: str) -> str:
        if value:
            Destination(value)
        return value

    @model_validator(mode="after")
    def _refuse_dev_defaults_in_production(self) -> Settings:
        if self.environment == "production":
            if self.database_url.startswith("sqlite"):
                raise ValueError("production needs CXRTRIAGE_DATABASE_URL for a server database")
            if self.broker_url.startswith("filesystem"):
                raise ValueError("production needs CXRTRIAGE_BROKER_URL, for example redis://")
            explicit = self.model_fields_set
            if not self.allowed_calling_aes or "allowed_peers" not in explicit or not self.allowed_peers:
                raise ValueError("production needs explicit CXRTRIAGE_ALLOWED_CALLING_AES and "
                                 "CXRTRIAGE_ALLOWED_PEERS lists")
        if self.environment == "production" and not self.web_tls_certificate and not self.web_tls_proxy:
            try:
                loopback = self.web_host == "localhost" or ipaddress.ip_address(self.web_host).is_loopback
            except ValueError:  # a host name other than localhost
                loopback = False
            if not loopback:
                raise ValueError("production refuses a review app on a non-loopback CXRTRIAGE_WEB_HOST "
                                 "without TLS: set CXRTRIAGE_WEB_TLS_CERTIFICATE and CXRTRIAGE_WEB_TLS_KEY, "
                                 "or CXRTRIAGE_WEB_TLS_PROXY=true when a TLS proxy is the only way in")
        if self.environment == "production" and self.web_forwarded_allow_ips.strip() == "*":
            raise ValueError("production refuses CXRTRIAGE_WEB_FORWARDED_ALLOW_IPS=*: any client could then "
                             "choose its own address and scheme; name the TLS proxy's address")
        if bool(self.web_tls_certificate) != bool(self.web_tls_key):
            raise ValueError("the review app's TLS needs both CXRTRIAGE_WEB_TLS_CERTIFICATE and "
                             "CXRTRIAGE_WEB_TLS_KEY")
        tls = [self.tls_certificate, self.tls_key, self.tls_ca]
        if any(tls) and not all(tls):
            raise ValueError("TLS needs CXRTRIAGE_TLS_CERTIFICATE, CXRTRIAGE_TLS_KEY and CXRTRIAGE_TLS_CA")
        if self.sr_tls and not all(tls):
            raise ValueError("CXRTRIAGE_SR_TLS needs the TLS certificate, key and CA settings")
        return self

    @property
    def destination(self) -> Destination | None:
        return Destination(self.sr_destination) if self.sr_destination else None


def load_settings(config_file: str | os.PathLike[str] | None = None) -> Settings:
    """Settings from a TOML file (if given, or named by CXRTRIAGE_CONFIG), overridden by env vars."""
    path = config_file or os.environ.get("CXRTRIAGE_CONFIG")
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as handle:
                values = tomllib.load(handle).get("cxrtriage", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    env_keys = {k[len("CXRTRIAGE_") :].lower() for k in os.environ if k.startswith("CXRTRIAGE_")}
    file_values = {k: v for k, v in values.items() if k not in env_keys}
    try:
        return Settings(**file_values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
