"""The dashboard's statistics on known values, and against scipy's reference implementation."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import stats

from cxrtriage.db.monitoring import StudyRead, VersionReads
from cxrtriage.web.plots import ks_critical, ks_statistic, operating_point, psi, summarise


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], 0.0),
        ([0.0, 0.0, 0.0], [1.0, 1.0], 1.0),
        ([0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6], 0.5),
        ([0.5], [0.2, 0.8], 0.5),
    ],
)
def test_ks_statistic_known_values(a, b, d) -> None:
    assert ks_statistic(np.array(a), np.array(b)) == pytest.approx(d)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_statistic_matches_scipy(seed) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.beta(0.7, 3.0, 80), rng.beta(1.2, 3.0, 55)
    assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)


@pytest.mark.parametrize(("n", "m", "critical"), [(100, 100, 0.2302), (50, 200, 0.2574)])
def test_ks_critical(n, m, critical) -> None:
    assert ks_critical(n, m) == pytest.approx(critical, abs=1e-4)
    assert math.isnan(ks_critical(0, 5))


def test_psi_known_values() -> None:
    scores = np.linspace(0.01, 0.99, 50)
    assert psi(scores, scores) == pytest.approx(0.0)
    low, high = np.full(10, 0.05), np.full(10, 0.95)
    assert psi(low, high) == pytest.approx(2 * (1 - 1e-4) * math.log(1 / 1e-4), rel=1e-3)


def _read(study_id: int, p: float, flagged: bool, verdicts: list[str], at: datetime) -> StudyRead:
    return StudyRead(
        study_id,
        at - timedelta(minutes=2),
        at,
        p,
        flagged,
        verdicts,
        at + timedelta(minutes=30) if verdicts else None,
    )


def test_summary_and_operating_point_on_known_reads() -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    # Week 1 (baseline): low scores. Week 3: high scores, clearly drifted.
    reads = [_read(i, 0.05 + 0.01 * i, False, [], start + timedelta(hours=i)) for i in range(20)]
    reads += [
        _read(
            100 + i,
            0.8,
            True,
            ["agree"] if i < 3 else ["disagree"] if i < 4 else [],
            start + timedelta(days=15, hours=i),
        )
        for i in range(20)
    ]
    version = VersionReads(1, "m", "1.0", 0.5, start, reads, not_analysed=10, not_analysed_reasons={"x": 10})
    summary = summarise(version)
    assert [w["studies"] for w in summary["weekly"]] == [20, 20]
    assert summary["weekly"][0]["ks"] == pytest.approx(0.0) and not summary["weekly"][0]["drift"]
    assert summary["weekly"][1]["ks"] == pytest.approx(1.0) and summary["drift_warning"]
    assert summary["not_analysed_rate"] == pytest.approx(10 / 50)
    assert summary["median_minutes_to_result"] == pytest.approx(2.0)
    assert summary["median_minutes_to_first_review"] == pytest.approx(30.0)
    # A second version read the same four labelled studies with a stricter threshold.
    newer = VersionReads(
        2,
        "m",
        "2.0",
        0.9,
        start,
        [_read(100 + i, 0.85 + 0.05 * (i == 0), True, [], start) for i in range(4)],
        0,
        {},
    )
    points = {p["model_version"]: p for p in operating_point([version, newer])}
    assert (points["1.0"]["tp"], points["1.0"]["fp"], points["1.0"]["labelled"]) == (3, 1, 4)
    assert (points["2.0"]["tp"], points["2.0"]["fn"], points["2.0"]["fp"], points["2.0"]["tn"]) == (
        1,
        2,
        0,
        1,
    )
