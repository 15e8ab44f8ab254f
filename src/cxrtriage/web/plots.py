"""The dashboard's plots, drawn on the server as inline SVG, and the numbers behind them.

Drift: each week's distribution of the flag-label probability is compared with the model
version's first two weeks by the two-sample Kolmogorov-Smirnov statistic D. The warning line is
D's critical value at alpha = 0.01 for the two sample sizes, c * sqrt((n + m) / (n m)) with
c = 1.628, so a busy week and a quiet week are judged fairly. The population stability index
(PSI, ten equal bins) is reported beside it; on a few dozen studies a week PSI is noisy (its
expected value without any drift is about 9 (1/n + 1/m)), which is why it does not raise the
warning."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta
from io import StringIO
from statistics import median
from typing import Any

import numpy as np

from cxrtriage.db.monitoring import StudyRead, VersionReads

KS_ALPHA = 0.01
KS_C = 1.628  # c(alpha) for alpha = 0.01
BASELINE_WEEKS = 2
BINS = np.linspace(0.0, 1.0, 11)


def week_of(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of `actual` scores against `expected` scores."""
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    e = np.histogram(expected, BINS)[0] / len(expected)
    a = np.histogram(actual, BINS)[0] / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(expected: np.ndarray, actual: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the two empirical CDFs."""
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    a, b = np.sort(expected), np.sort(actual)
    values = np.concatenate([a, b])
    gap = (np.searchsorted(a, values, side="right") / len(a)
           - np.searchsorted(b, values, side="right") / len(b))
    return float(np.max(np.abs(gap)))


def ks_critical(n: int, m: int) -> float:
    """D above which the two samples differ at alpha = 0.01."""
    return KS_C * math.sqrt((n + m) / (n * m)) if n and m else float("nan")


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60.0


def summarise(version: VersionReads) -> dict[str, Any]:
    """Weekly series, turnaround and drift of one model version."""
    reads = version.reads
    weeks: dict[str, list[StudyRead]] = {}
    for read in reads:
        weeks.setdefault(week_of(read.result_at), []).append(read)
    labels = sorted(weeks)
    start = reads[0].result_at if reads else None
    baseline = np.array([r.probability for r in reads if start and r.result_at < start + timedelta(
        weeks=BASELINE_WEEKS)])
    weekly: list[dict[str, Any]] = []
    for w in labels:
        scores = np.array([r.probability for r in weeks[w]])
        d, critical = ks_statistic(baseline, scores), ks_critical(len(baseline), len(scores))
        weekly.append({"week": w, "studies": len(weeks[w]),
                       "positive_rate": sum(r.flagged for r in weeks[w]) / len(weeks[w]),
                       "ks": d, "ks_critical": critical, "drift": bool(d > critical),
                       "psi": psi(baseline, scores)})
    to_result = [_minutes(r.result_at - r.received_at) for r in reads]
    to_review = [_minutes(r.first_review_at - r.result_at) for r in reads if r.first_review_at]
    verdicts = Counter(v for r in reads for v in r.verdicts)
    total = len(reads) + version.not_analysed
    latest = weekly[-1] if weekly else None
    return {
        "weekly": weekly,
        "baseline_positive_rate": (sum(r.flagged for r in reads if start and r.result_at < start + timedelta(
            weeks=BASELINE_WEEKS)) / len(baseline)) if len(baseline) else None,
        "median_minutes_to_result": median(to_result) if to_result else None,
        "median_minutes_to_first_review": median(to_review) if to_review else None,
        "reviewed": len(to_review),
        "verdicts": dict(verdicts),
        "not_analysed_rate": version.not_analysed / total if total else None,
        "not_analysed_reasons": version.not_analysed_reasons,
        "latest_ks": latest["ks"] if latest else None,
        "latest_ks_critical": latest["ks_critical"] if latest else None,
        "latest_psi": latest["psi"] if latest else None,
        "drift_warning": bool(latest and latest["drift"]),
    }


def operating_point(versions: list[VersionReads]) -> list[dict[str, Any]]:
    """What each version's threshold yields on the studies that have feedback. A verdict makes a
    label: agree with a flag or disagree with no flag is positive, and the reverse negative
    (uncertain gives none; the majority of users decides). Display only."""
    votes: dict[int, list[bool]] = {}
    for version in versions:
        for read in version.reads:
            for verdict in read.verdicts:
                if verdict in ("agree", "disagree"):
                    votes.setdefault(read.study_id, []).append(read.flagged == (verdict == "agree"))
    truth = {sid: sum(v) * 2 > len(v) for sid, v in votes.items() if sum(v) * 2 != len(v)}
    out = []
    for version in versions:
        threshold = version.threshold if version.threshold is not None else 0.5
        tp = fp = fn = tn = 0
        for read in version.reads:
            if read.study_id not in truth:
                continue
            predicted, actual = read.probability >= threshold, truth[read.study_id]
            tp += predicted and actual
            fp += predicted and not actual
            fn += not predicted and actual
            tn += not predicted and not actual
        n = tp + fp + fn + tn
        out.append({"model_version": version.version, "threshold": threshold, "labelled": n,
                    "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                    "sensitivity": tp / (tp + fn) if tp + fn else None,
                    "specificity": tn / (tn + fp) if tn + fp else None,
                    "ppv": tp / (tp + fp) if tp + fp else None})
    return out


def version_figure(version: VersionReads, summary: dict[str, Any]) -> str:
    """Six panels for one model version, as an SVG string."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    weekly = summary["weekly"]
    weeks = [w["week"] for w in weekly]
    x = np.arange(len(weeks))
    ax = axes[0, 0]
    ax.bar(x, [w["studies"] for w in weekly], color="#4c72b0")
    ax.set_title("Studies read per week")
    ax.set_xticks(x, weeks, rotation=45, ha="right", fontsize=7)
    ax = axes[0, 1]
    ax.plot(x, [w["positive_rate"] for w in weekly], marker="o", color="#c44e52", label="weekly")
    if summary["baseline_positive_rate"] is not None:
        ax.axhline(summary["baseline_positive_rate"], color="gray", linestyle="--", label="first weeks")
    ax.set_ylim(0, 1)
    ax.set_title("Positive (flagged) rate")
    ax.set_xticks(x, weeks, rotation=45, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    scores = [r.probability for r in version.reads]
    ax.hist(scores, bins=20, range=(0, 1), color="#55a868")
    if version.threshold is not None:
        ax.axvline(version.threshold, color="black", linestyle="--",
                   label=f"threshold {version.threshold:.2f}")
        ax.legend(fontsize=7)
    ax.set_title("Score histogram")
    ax.set_xlabel("probability of the flag label")
    ax = axes[1, 0]
    to_result = [_minutes(r.result_at - r.received_at) for r in version.reads]
    to_review = [_minutes(r.first_review_at - r.result_at) for r in version.reads if r.first_review_at]
    data = [d if d else [0.0] for d in (to_result, to_review)]
    ax.boxplot(data, tick_labels=["received → result", "result → first review"])
    ax.set_ylabel("minutes")
    ax.set_title("Turnaround")
    ax = axes[1, 1]
    ax.plot(x, [w["ks"] for w in weekly], marker="o", color="#8172b2", label="KS D vs first 2 weeks")
    ax.step(x, [w["ks_critical"] for w in weekly], where="mid", color="#c44e52", linestyle="--",
            label=f"warning (critical D, alpha {KS_ALPHA})")
    ax.set_ylim(0, 1)
    ax.set_title("Drift of the score distribution (KS)")
    ax.set_xticks(x, weeks, rotation=45, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    ax = axes[1, 2]
    reasons = sorted(version.not_analysed_reasons.items(), key=lambda kv: -kv[1])[:6]
    if reasons:
        ax.barh([r[:40] for r, _ in reasons], [n for _, n in reasons], color="#dd8452")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center")
    rate = summary["not_analysed_rate"]
    ax.set_title(f"Not analysed ({rate:.0%})" if rate is not None else "Not analysed")
    fig.suptitle(f"{version.name} {version.version}")
    fig.tight_layout()
    out = StringIO()
    fig.savefig(out, format="svg")
    plt.close(fig)
    svg = out.getvalue()
    return svg[svg.index("<svg"):]
