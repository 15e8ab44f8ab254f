"""The viewer's arithmetic (web/static/viewer.js, run with node) is the grayscale pipeline's
(dicom/preprocess.py): the canvas must paint what the server's preview paints. Skipped where
node is not installed; the browser test compares the two pictures as well."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxrtriage.dicom import preprocess

VIEWER = Path(__file__).resolve().parents[2] / "src/cxrtriage/web/static/viewer.js"
NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")
VALUES = [-2000.0, -1000.5, -600.0, -1.0, 0.0, 0.5, 39.5, 40.0, 40.49, 41.0, 240.0, 1000.0, 4095.0]


def node(expression: str) -> Any:
    script = f"const v = require({json.dumps(str(VIEWER))}); console.log(JSON.stringify({expression}));"
    result = subprocess.run([str(NODE), "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize(("center", "width", "function"), [
    (40.0, 400.0, "LINEAR"), (40.0, 1.0, "LINEAR"), (-600.0, 1500.0, "LINEAR"), (40.0, 0.2, "LINEAR"),
    (40.0, 400.0, "LINEAR_EXACT"), (2048.0, 4096.0, "LINEAR_EXACT"), (40.0, 400.0, "SIGMOID"),
])
def test_windows_match_the_pipeline(center: float, width: float, function: str) -> None:
    expected = preprocess._window(np.array(VALUES, dtype=np.float64), center, width, function)
    call = f"v.windowFraction(x, {center}, {width}, {json.dumps(function)})"
    found = node(f"{json.dumps(VALUES)}.map(x => {call})")
    assert np.allclose(found, expected, atol=1e-9)


def test_a_voi_lut_matches_the_pipeline() -> None:
    table = [int(4095 * (i / 255) ** 2) for i in range(256)]
    ds = Dataset()
    item = Dataset()
    item.LUTDescriptor = [256, 100, 12]
    item.LUTData = table
    ds.VOILUTSequence = Sequence([item])
    values = [0.0, 99.0, 100.0, 150.4, 150.6, 355.0, 356.0, 9999.0]
    expected = preprocess._apply_voi(np.array(values, dtype=np.float32), ds)
    lut = f"{{first_mapped: 100, table: {json.dumps(table)}, top: v.lutTop(12, {json.dumps(table)})}}"
    found = node(f"{json.dumps(values)}.map(x => v.lutFraction(x, {lut}))")
    assert np.allclose(found, expected, atol=1e-6)


def test_the_code_table_inverts_and_blacks_out_padding() -> None:
    found = node("(() => { const t = v.codeTable({kind: 'window', center: 0, width: 100, "
                 "fn: 'LINEAR_EXACT', invert: true}, [], -50, 65535); "
                 "return [t[0], t[50], t[100], t[65535]].map(x => x & 255); })()")
    assert found == [255, 128, 0, 0]  # -50 is white once inverted, 0 is mid-gray, padding is black
    plain = node("Array.from(v.codeTable({kind: 'window', center: 0, width: 100, fn: 'LINEAR_EXACT', "
                 "invert: false}, [], -50, null).slice(0, 3)).map(x => x >>> 24)")
    assert plain == [255, 255, 255]  # opaque


@pytest.mark.parametrize(("rows", "columns", "aspect", "expected"), [
    (100, 50, 1.0, {"w": 50, "h": 100}),
    (100, 50, 2.0, {"w": 50, "h": 200}),  # rows twice as far apart: twice as tall
    (100, 50, 0.5, {"w": 100, "h": 100}),
])
def test_true_proportions(rows: int, columns: int, aspect: float, expected: dict[str, float]) -> None:
    assert node(f"v.displayUnits({rows}, {columns}, {aspect})") == expected
