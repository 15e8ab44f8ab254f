"""Hostile browsers and scripts at the review app (issue 17): whatever a stranger sends costs only
the stranger. Chunked uploads go to a real uvicorn on a free loopback port, written on a raw
socket, so the streaming is real; the counts of what the app read come from an in-process ASGI
transport that hands the body over one chunk at a time. Password sprays come from addresses of
their own (the test client's `client`), so the lockout's pairs can be told apart."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from cxrtriage.config import Settings
from cxrtriage.db.accounts import LoginFailures, close_windows
from cxrtriage.db.models import AuditEvent, utcnow
from cxrtriage.db.session import Database
from cxrtriage.errors import InvalidInputError
from cxrtriage.web.app import MULTIPART_OVERHEAD, create_app
from cxrtriage.web.limits import DRAIN_BYTES
from cxrtriage.web.server import uvicorn_options
from tests.hostile_http import CHUNK, chunked_post, uvicorn_thread
from tests.integration.test_web_api import PASSWORD, _add_users
from tests.servers import LOOPBACK, start_postgres
from tests.tls_certs import make_ca, make_cert

ALICE = ("alice", PASSWORD)
ROOT = ("root", PASSWORD)
MiB = 1024 * 1024
STRANGER = ("10.66.6.6", 40000)
DESK = ("10.1.1.1", 40000)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def users_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostiledb") / "web.db"
    _add_users(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_postgres(tmp_path_factory.mktemp("pg"))
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture
def make_app(request: pytest.FixtureRequest, users_db: Path, tmp_path: Path,
             tiny_package: Path) -> Iterator[Callable[..., tuple[FastAPI, Database]]]:
    """make_app(kind="sqlite", **settings): the review app on a fresh database with the users."""
    made: list[Database] = []

    def make(kind: str = "sqlite", **overrides: Any) -> tuple[FastAPI, Database]:
        if kind == "postgresql":
            import psycopg

            server = request.getfixturevalue("postgres_server")
            name = f"hostile_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(server.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            url = server.rsplit("/", 1)[0] + f"/{name}"
            _add_users(url)
        else:
            path = tmp_path / f"web{len(made)}.db"
            shutil.copy(users_db, path)
            url = f"sqlite:///{path}"
        settings = Settings(database_url=url, storage_dir=tmp_path / "storage", model=tiny_package,
                            broker_dir=tmp_path / "broker", **overrides)
        db = Database(url)
        made.append(db)
        return create_app(settings, db), db

    yield make
    for db in made:
        db.engine.dispose()


def _form_login(client: TestClient, username: str, password: str) -> httpx.Response:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token},
                       follow_redirects=False)


def _sign_in(base: str, username: str = "alice") -> httpx.Client:
    """A browser's session over real HTTP: the cookie and the page's CSRF token."""
    client = httpx.Client(base_url=base, timeout=30, follow_redirects=True)
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    answer = client.post("/login", data={"username": username, "password": PASSWORD, "csrf_token": token})
    assert answer.status_code == 200 and "/login" not in str(answer.url), answer.text[-300:]
    return client


def _basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _audit(db: Database, prefix: str = "login") -> list[AuditEvent]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action.startswith(prefix))
                                    .order_by(AuditEvent.id)).all())


# --- the body limit: counted as it arrives, after the credentials ------------------------------


@pytest.mark.parametrize("path, status", [("/api/studies/1.2.3/feedback", 401), ("/try", 303)])
def test_a_strangers_endless_chunked_upload_is_refused_unread(make_app, path: str, status: int) -> None:
    """64 MiB, chunked, without a session or a password: the answer (401, or the sign-in redirect
    for a page) comes at once, before more than the sockets' buffers were sent, and the server
    closes rather than swallow the rest. Before the gate, all 64 MiB were read, then 422."""
    app, _ = make_app()
    with uvicorn_thread(app) as port:
        honest = _sign_in(f"http://{LOOPBACK}:{port}")
        upload = chunked_post(port, path, 64 * MiB, {"Content-Type": "application/json"})
        assert upload.status == status, upload.answer[:200]
        assert upload.seconds_to_answer < 5
        assert upload.sent_before_answer < 16 * MiB, upload
        assert upload.closed and upload.sent < 32 * MiB, "the server read on after refusing"
        assert honest.get("/").status_code == 200


def test_a_signed_in_upload_stops_at_the_body_limit(make_app) -> None:
    """Past CXRTRIAGE_WEB_MAX_BODY_BYTES (1 MiB) a chunked JSON body gets 413 while it streams."""
    app, _ = make_app()
    with uvicorn_thread(app) as port:
        upload = chunked_post(port, "/api/studies/1.2.3/feedback", 64 * MiB,
                              {"Content-Type": "application/json",
                               "Authorization": _basic_header(*ALICE)})
        assert upload.status == 413, upload.answer[:200]
        assert upload.sent_before_answer < MiB + 16 * MiB and upload.closed and upload.sent < 32 * MiB


def test_try_an_image_upload_stops_at_its_limit(make_app) -> None:
    """"Try an image" spools its upload: a signed-in user's endless one stops at the upload limit
    (here 2 MiB) plus the multipart overhead, chunked or not."""
    app, _ = make_app(web_max_upload_bytes=2 * MiB)
    with uvicorn_thread(app) as port:
        honest = _sign_in(f"http://{LOOPBACK}:{port}")
        cookie = "; ".join(f"{k}={v}" for k, v in honest.cookies.items())
        boundary = "xyzzy"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()
        upload = chunked_post(port, "/try", 64 * MiB, {
            "Content-Type": f"multipart/form-data; boundary={boundary}", "Cookie": cookie}, prefix=head)
        assert upload.status == 413, upload.answer[:200]
        assert upload.sent_before_answer < 2 * MiB + 16 * MiB and upload.closed and upload.sent < 32 * MiB
        assert honest.get("/").status_code == 200


class _Counted:
    """A request body handed to the app one chunk at a time, counting what the app took."""

    def __init__(self, size: int, chunk: int = 1000) -> None:
        self.size, self.chunk, self.taken = size, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.taken < self.size:
            piece = b" " * min(self.chunk, self.size - self.taken)
            self.taken += len(piece)
            yield piece


def _in_process(app: FastAPI, calls: Callable[[httpx.AsyncClient], Any],
                client: tuple[str, int] = DESK) -> Any:
    async def main() -> Any:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://review.test") as http:
            return await calls(http)

    return asyncio.run(main())


def test_body_limit_one_byte_over_counted_as_it_arrives(make_app) -> None:
    limit = 8192
    app, _ = make_app(web_max_body_bytes=limit)
    url = "/api/studies/1.2.3/feedback"
    json_type = {"content-type": "application/json"}

    async def calls(http: httpx.AsyncClient) -> None:
        over = _Counted(limit + 1)
        answer = await http.post(url, content=over, auth=ALICE, headers=json_type)  # chunked
        assert answer.status_code == 413 and over.taken == limit + 1
        exact = _Counted(limit)
        answer = await http.post(url, content=exact, auth=ALICE, headers=json_type)
        assert answer.status_code == 422 and exact.taken == limit  # read whole: spaces are no JSON
        declared = _Counted(limit + 1)
        answer = await http.post(url, content=declared, auth=ALICE,
                                 headers={**json_type, "content-length": str(limit + 1)})
        assert answer.status_code == 413 and declared.taken == 0  # refused from the header
        stranger = _Counted(64 * MiB, chunk=CHUNK)
        answer = await http.post(url, content=stranger, headers=json_type)  # no credentials
        assert answer.status_code == 401 and stranger.taken <= DRAIN_BYTES + CHUNK
        small = _Counted(200)
        answer = await http.post(url, content=small, headers=json_type)
        assert answer.status_code == 401 and "connection" not in answer.headers  # drained: kept open

    _in_process(app, calls)


def test_try_an_image_one_byte_over_its_limit(make_app) -> None:
    limit = 4096
    app, _ = make_app(web_max_upload_bytes=limit)
    client = TestClient(app)
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text).group(1)  # type: ignore[union-attr]

    def send(size: int) -> int:
        files = {"file": ("x.png", b"\x89" * size, "image/png")}
        return client.post("/try", files=files, data={"csrf_token": csrf}).status_code

    assert send(limit) == 422  # within the limit: read, and refused as no image
    assert send(limit + 1) == 413
    answer = client.post("/try", content=b"x" * (limit + MULTIPART_OVERHEAD + 1),
                         headers={"content-type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413


# --- one throttle and one audit path for every password ----------------------------------------


def test_basic_and_the_form_share_one_throttle_and_one_audit_path(make_app) -> None:
    app, db = make_app(web_login_attempts=3)
    stranger = TestClient(app, client=STRANGER)
    assert stranger.get("/api/worklist", auth=("alice", "guess 1")).status_code == 401
    assert _form_login(stranger, "alice", "guess 2").status_code == 401
    assert stranger.get("/api/worklist", auth=("alice", "guess 3")).status_code == 401
    locked = stranger.get("/api/worklist", auth=ALICE)  # even the right password waits
    assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 300
    refused = _form_login(stranger, "alice", PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    desk = TestClient(app, client=DESK)  # alice at her own desk is not locked out
    assert desk.get("/api/worklist", auth=ALICE).status_code == 200
    assert _form_login(desk, "alice", PASSWORD).status_code == 303
    events = _audit(db)
    failed = [e for e in events if e.action == "login_failed"]
    assert [(e.username, e.client, e.detail["via"]) for e in failed] == [("alice", STRANGER[0], "basic")]
    signed_in = {(e.client, e.detail.get("via")) for e in events if e.action == "login"}
    assert signed_in == {(DESK[0], "basic"), (DESK[0], "form")}
    with db.session() as session:
        [row] = session.scalars(select(LoginFailures).where(LoginFailures.username == "alice")).all()
        assert (row.client, row.failures, row.basic, row.refused) == (STRANGER[0], 3, 2, 2)


def test_a_spray_from_one_address_locks_out_no_one_elsewhere(make_app) -> None:
    """A stranger sprays the admin and everyone else, by Basic and the form: the stranger's address
    is locked after CXRTRIAGE_WEB_LOGIN_ATTEMPTS failures; the admin signs in from their own."""
    app, _ = make_app()  # the defaults: 5 failures
    stranger = TestClient(app, client=STRANGER)
    statuses: Counter[int] = Counter()
    for i in range(60):  # the admin first: five failures for one name from anywhere locked it before
        name = "root" if i < 10 else ("root", "alice", f"user{i}")[i % 3]
        if i % 2:
            statuses[stranger.get("/api/worklist", auth=(name, f"Winter2026!{i}")).status_code] += 1
        else:
            statuses[_form_login(stranger, name, f"Winter2026!{i}").status_code] += 1
    assert statuses == {401: 5, 429: 55}
    admin = TestClient(app, client=DESK)
    assert _form_login(admin, "root", PASSWORD).status_code == 303
    assert admin.get("/audit").status_code == 200
    assert TestClient(app, client=("10.1.1.2", 1)).get("/api/audit", auth=ROOT).status_code == 200


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_audit_log_stays_bounded_under_a_spray_and_keeps_the_count(make_app, kind: str) -> None:
    """200 attempts from one address add at most one row per (name, address) pair while they
    last, and one summary per pair when its window closes; the summaries add up to 200."""
    app, db = make_app(kind)
    stranger = TestClient(app, client=STRANGER)
    before = len(_audit(db))
    attempts = 200
    for i in range(attempts):
        name = ("root", "alice", "bob", f"nobody{i}")[i % 4]
        if i % 5:
            stranger.get("/api/worklist", auth=(name, f"guess {i}"))
        else:
            _form_login(stranger, name, f"guess {i}")
    during = _audit(db)[before:]
    assert 1 <= len(during) <= 5, [e.action for e in during]  # one login_failed per failing pair
    with db.session() as session:
        assert close_windows(session, 300.0, now=utcnow() + timedelta(seconds=301)) >= 1
    events = _audit(db)[before:]
    assert len(events) <= 2 * 5 + 1
    summaries = {(e.username, e.client): e.detail for e in events if e.action == "login_failures"}
    counted = sum(d["failures"] + d["refused"] for d in summaries.values())
    alone = [e for e in events if e.action == "login_failed" and (e.username, e.client) not in summaries]
    counted += len(alone)
    assert counted == attempts
    assert sum(d["form"] for d in summaries.values()) + sum(d["basic"] for d in summaries.values()) <= 5


def test_the_global_slowdown_delays_failing_addresses_and_locks_no_one(make_app) -> None:
    """Past CXRTRIAGE_WEB_LOGIN_GLOBAL_ATTEMPTS failures from everywhere, addresses that failed
    wait their turn, one per slowdown; a clean address is not slowed; nobody is locked."""
    slowdown = 1.5
    app, _ = make_app(web_login_global_attempts=3, web_login_slowdown_seconds=slowdown)
    for n in range(3):
        TestClient(app, client=(f"10.66.6.{n}", 1)).get("/api/worklist", auth=("root", "guess"))

    async def timed(client: tuple[str, int], auth: tuple[str, str]) -> tuple[int, float]:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://review.test") as http:
            start = time.monotonic()
            answer = await http.get("/api/worklist", auth=auth)
            return answer.status_code, time.monotonic() - start

    async def main() -> list[tuple[int, float]]:
        return list(await asyncio.gather(timed(("10.66.6.0", 1), ALICE), timed(("10.66.6.1", 1), ALICE),
                                         timed(DESK, ALICE)))

    (first, a), (second, b), (clean, c) = asyncio.run(main())
    assert first == second == clean == 200  # slowed, never locked
    assert max(a, b) >= 2 * slowdown and min(a, b) >= slowdown  # in single file
    assert c < slowdown


def test_passwords_and_try_an_image_never_block_the_event_loop(make_app, monkeypatch) -> None:
    """argon2 (made to take 1 s here) and "try an image" (decoding and spooling, 1 s) run off the
    event loop: /healthz answers meanwhile. Before, both ran on it and every user waited."""
    import cxrtriage.web.auth as auth

    app, _ = make_app()
    real = auth.authenticate
    began: list[float] = []  # when the blocking work started

    def slow_authenticate(*args: Any) -> Any:
        began.append(time.monotonic())
        time.sleep(1.0)
        return real(*args)

    def slow_try(*_: Any) -> Any:
        began.append(time.monotonic())
        time.sleep(1.0)
        raise InvalidInputError("not an image")

    monkeypatch.setattr(auth, "authenticate", slow_authenticate)
    app.state.trials.accept = slow_try

    async def healthz_while(http: httpx.AsyncClient, busy: Any) -> float:
        """Seconds from the start of the blocking work to /healthz's answer: on the event loop,
        the answer would wait for the whole second."""
        began.clear()
        task = asyncio.ensure_future(busy)
        while not began:
            await asyncio.sleep(0.01)
        assert (await http.get("/healthz")).status_code == 200
        elapsed = time.monotonic() - began[0]
        await task
        return elapsed

    async def calls(http: httpx.AsyncClient) -> list[float]:
        during_basic = await healthz_while(http, http.get("/api/worklist", auth=ALICE))
        form = await http.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        during_form = await healthz_while(http, http.post(
            "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token}))
        page = await http.get("/")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        during_try = await healthz_while(http, http.post(
            "/try", files={"file": ("x.png", b"png", "image/png")}, data={"csrf_token": csrf}))
        return [during_basic, during_form, during_try]

    assert all(t < 0.5 for t in _in_process(app, calls)), "a request waited for blocking work"


# --- TLS and HSTS ------------------------------------------------------------------------------


def test_hsts_only_over_https(make_app) -> None:
    app, _ = make_app()
    secure = TestClient(app, base_url="https://review.example")
    for answer in (secure.get("/login"), secure.get("/api/worklist"), secure.get("/healthz")):
        assert answer.headers["strict-transport-security"] == "max-age=31536000"
    assert "strict-transport-security" not in TestClient(app).get("/login").headers


def test_uvicorn_serves_https_with_the_apps_own_certificate(make_app, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki", "hospital-ca")
    cert, key = make_cert(tmp_path / "pki", "hospital-ca", "review")
    app, _ = make_app()
    settings = Settings(web_tls_certificate=cert, web_tls_key=key)
    options = {k: v for k, v in uvicorn_options(settings).items() if k.startswith("ssl_")}
    assert options == {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    with uvicorn_thread(app, **options) as port:
        answer = httpx.get(f"https://{LOOPBACK}:{port}/login", verify=ssl.create_default_context(cafile=ca))
        assert answer.status_code == 200 and answer.headers["strict-transport-security"]
        cookie = answer.headers["set-cookie"]
        assert "Secure" in cookie


PRODUCTION = {"environment": "production", "database_url": "postgresql+psycopg://x@127.0.0.1:1/x",
              "broker_url": "redis://127.0.0.1:1/0", "allowed_calling_aes": ["MOD"],
              "allowed_peers": ["127.0.0.1/32"]}


@pytest.mark.parametrize("web, refused", [
    ({"web_host": "0.0.0.0"}, True),
    ({"web_host": "::"}, True),
    ({"web_host": "triage.hospital.example"}, True),
    ({"web_host": "127.0.0.1"}, False),
    ({"web_host": "::1"}, False),
    ({"web_host": "localhost"}, False),
    ({"web_host": "0.0.0.0", "web_tls_proxy": True, "web_forwarded_allow_ips": "172.30.80.10"}, False),
    ({"web_host": "0.0.0.0", "web_tls_proxy": True, "web_forwarded_allow_ips": "*"}, True),
    ({"web_host": "0.0.0.0", "web_tls_certificate": "/c.pem", "web_tls_key": "/c.key"}, False),
    ({"web_host": "0.0.0.0", "web_tls_certificate": "/c.pem"}, True),
])
def test_production_refuses_plain_http_on_a_network_address(web: dict[str, Any], refused: bool) -> None:
    if refused:
        with pytest.raises(ValidationError, match="CXRTRIAGE_WEB_"):
            Settings(**PRODUCTION, **web)
    else:
        Settings(**PRODUCTION, **web)


def test_cxrtriage_web_refuses_to_start_in_production_without_tls(tmp_path: Path) -> None:
    env = {"CXRTRIAGE_ENVIRONMENT": "production", "CXRTRIAGE_DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/x",
           "CXRTRIAGE_BROKER_URL": "redis://127.0.0.1:1/0", "CXRTRIAGE_ALLOWED_CALLING_AES": "MOD",
           "CXRTRIAGE_ALLOWED_PEERS": "127.0.0.1/32", "CXRTRIAGE_WEB_HOST": "0.0.0.0"}
    result = subprocess.run([sys.executable, "-m", "cxrtriage.cli", "web"], cwd=tmp_path,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "CXRTRIAGE_WEB_TLS_CERTIFICATE" in result.stderr, result.stderr[-500:]


def test_compose_puts_tls_and_hsts_in_front_of_the_review_app() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    web, proxy = services["web"], services["proxy"]
    assert "ports" not in web, "the review app must not be published in plain HTTP"
    assert proxy["image"].startswith("nginx") and "443:443" in proxy["ports"]
    assert web["environment"]["CXRTRIAGE_WEB_TLS_PROXY"] == "true"
    proxy_ip = proxy["networks"]["front"]["ipv4_address"]
    assert web["environment"]["CXRTRIAGE_WEB_FORWARDED_ALLOW_IPS"] == proxy_ip
    mounted = {v.split(":")[1]: v.split(":")[0] for v in proxy["volumes"]}
    conf = (REPO / "deploy" / mounted["/etc/nginx/conf.d/default.conf"]).resolve()
    text = conf.read_text()
    for needed in ("listen 443 ssl", 'Strict-Transport-Security "max-age=31536000" always',
                   "proxy_request_buffering off", "X-Forwarded-Proto $scheme",
                   "X-Forwarded-For $remote_addr", "return 301 https://"):
        assert needed in text, needed
    assert "proxy_pass http://web:8080" in text
