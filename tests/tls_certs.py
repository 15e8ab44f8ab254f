"""A throwaway CA and certificates for TLS tests, made with the openssl command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.servers import binary


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([binary("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
         cwd=folder)
    return folder / f"{name}.pem"


def make_cert(folder: Path, ca: str, name: str) -> tuple[Path, Path]:
    """A certificate for `name`, valid for 127.0.0.1, signed by the CA called `ca`."""
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
         f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"
