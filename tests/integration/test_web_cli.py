"""`cxrtriage users` and `cxrtriage web`: accounts made from the command line sign in to the app
that `cxrtriage web` serves; a disabled account no longer does."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import LOOPBACK, Proc, free_port, wait_for


def _cli(env: dict[str, str], cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxrtriage.cli", *args],
        input=stdin,
        text=True,
        capture_output=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=120,
    )


def _status(port: int, user: str, password: str) -> int:
    request = urllib.request.Request(f"http://{LOOPBACK}:{port}/api/worklist")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_users_commands_and_web_server(tmp_path: Path) -> None:
    port = free_port()
    env = {"CXRTRIAGE_WEB_PORT": str(port), "CXRTRIAGE_LOG_LEVEL": "INFO"}
    added = _cli(env, tmp_path, "users", "add", "alice", "--role", "admin", stdin="first password\n")
    assert added.returncode == 0, added.stderr
    assert (
        _cli(env, tmp_path, "users", "add", "alice", "--role", "admin", stdin="x" * 10 + "\n").returncode == 2
    )
    short = _cli(env, tmp_path, "users", "add", "bob", "--role", "radiologist", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    assert (
        _cli(
            env, tmp_path, "users", "add", "bob", "--role", "radiologist", stdin="bob's password\n"
        ).returncode
        == 0
    )
    listed = _cli(env, tmp_path, "users", "list").stdout
    assert "alice" in listed and "admin" in listed and "bob" in listed and "radiologist" in listed
    assert "password" not in listed and "argon2" not in listed

    web = Proc("web", [sys.executable, "-m", "cxrtriage.cli", "web"], tmp_path, env=env, cwd=tmp_path)
    try:
        wait_for(
            lambda: urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=2).status == 200,
            60,
            "cxrtriage web",
        )
        assert _status(port, "alice", "first password") == 200
        assert _cli(env, tmp_path, "users", "passwd", "alice", stdin="second password\n").returncode == 0
        assert _status(port, "alice", "first password") == 401
        assert _status(port, "alice", "second password") == 200
        assert _status(port, "bob", "bob's password") == 200
        assert _cli(env, tmp_path, "users", "disable", "bob").returncode == 0
        assert _status(port, "bob", "bob's password") == 401
        assert "False" in _cli(env, tmp_path, "users", "list").stdout
        assert _cli(env, tmp_path, "users", "disable", "nobody").returncode == 2
    except BaseException:
        web.dump()
        raise
    finally:
        web.stop()
    assert "second password" not in web.log() and "bob's password" not in web.log()
