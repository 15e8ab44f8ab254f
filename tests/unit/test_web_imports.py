"""The review app never loads the model: importing it, in a fresh interpreter, loads neither
torch, torchvision nor cxrtriage.models (test_import_rules.py checks the source; this checks what
actually gets imported, through every module the app pulls in)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from cxrtriage.web.app import create_app  # noqa: F401
import cxrtriage.web.server  # noqa: F401
print(json.dumps(sorted(m for m in sys.modules
                        if m.split(".")[0] in ("torch", "torchvision") or m.startswith("cxrtriage.models"))))
"""


def test_the_review_app_imports_no_model_code() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "torch" not in loaded and loaded == [], loaded
