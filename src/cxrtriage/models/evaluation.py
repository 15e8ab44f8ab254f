"""`cxrtriage evaluate PACKAGE DATA`: metrics at the package's operating threshold with bootstrap
intervals, calibration, and plots, written as a Markdown or HTML report."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cxrtriage.errors import InvalidInputError
from cxrtriage.models import metrics, plots, shifted
from cxrtriage.models.data import Sample, discover, holdout_split
from cxrtriage.models.inference import Classifier
from cxrtriage.models.metrics import summarize
from cxrtriage.models.model_input import fit_to_square, load_gray


def config_split(config_file: str | Path) -> tuple[list[Sample], list[Sample]]:
    """The training and validation samples of a training config: the same discovery, sampling
    and split as `training.prepare_data`, without decoding anything."""
    from cxrtriage.models.train_config import load_train_config

    cfg = load_train_config(config_file)
    samples = discover(cfg.data)
    if cfg.max_samples:
        rng = np.random.default_rng(cfg.seed)
        samples = [samples[i] for i in sorted(rng.choice(len(samples), cfg.max_samples, replace=False))]
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    return holdout_split(samples, cfg.holdout, cfg.val_fraction, split_seed)


def holdout_samples(config_file: str | Path) -> list[Sample]:
    """The validation patients of a training config."""
    return config_split(config_file)[1]


def unseen_by(samples: list[Sample], config_files: list[str | Path]) -> list[Sample]:
    """The samples that none of these training configs trained on: how to measure a package
    on a holdout that overlaps its members' training data."""
    trained = {s.path for config in config_files for s in config_split(config)[0]}
    return [s for s in samples if s.path not in trained]


def score(classifier: Classifier, paths: list[str]) -> tuple[np.ndarray, list[str]]:
    """Flag-label probabilities through the serving preprocessing; unreadable files are listed."""
    m = classifier.manifest
    flag_index = m.labels.index(m.flag_label)
    probs, skipped = [], []
    batch: list[np.ndarray] = []
    for path in tqdm(paths, desc="scoring", unit="img"):
        try:
            batch.append(fit_to_square(load_gray(path), m.input_size))
        except InvalidInputError:
            skipped.append(path)
            batch.append(np.zeros((m.input_size, m.input_size), dtype=np.float32))
    for start in range(0, len(batch), 64):
        probs.append(classifier.probabilities(np.stack(batch[start : start + 64]))[:, flag_index])
    return np.concatenate(probs) if probs else np.zeros(0), skipped


def _rows(columns: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, ...]]:
    """The report table: a header row, then one row per metric with one cell per column."""
    def ci(summary: dict[str, Any], name: str) -> str:
        low, high = summary[f"{name}_95ci"]
        return f"{summary[name]:.3f} ({low:.3f}-{high:.3f})"

    def row(label: str, cell: Any) -> tuple[str, ...]:
        return (label, *(cell(s) for _, s in columns))

    return [("metric", *(name for name, _ in columns)),
            row("images", lambda s: str(s["n_images"])), row("positives", lambda s: str(s["n_positive"])),
            row("AUROC (95% CI)", lambda s: ci(s, "auroc")),
            row("accuracy (95% CI)", lambda s: ci(s, "accuracy")),
            row("sensitivity (95% CI)", lambda s: ci(s, "sensitivity")),
            row("specificity (95% CI)", lambda s: ci(s, "specificity")),
            row("precision", lambda s: f"{s['precision']:.3f}"), row("F1", lambda s: f"{s['f1']:.3f}"),
            row("expected calibration error", lambda s: f"{s['ece']:.3f}"),
            row("threshold", lambda s: f"{s['threshold']:.4f}")]


def _markdown(title: str, rows: list[tuple[str, ...]], images: list[str], notes: list[str]) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", *notes, ""] + [f"![{i}]({i})" for i in images]
    return "\n".join(lines) + "\n"


def _html(title: str, rows: list[tuple[str, ...]], images: list[str], notes: list[str]) -> str:
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    figures = "".join(f'<figure><img src="{i}" width="480"></figure>' for i in images)
    paragraphs = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"</head><body><h1>{html.escape(title)}</h1><table>{table}</table>{paragraphs}"
            f"{figures}</body></html>\n")


def score_shifted(classifier: Classifier, samples: list[Sample], variants: int, seed: int,
                  cache_dir: str | Path) -> tuple[np.ndarray, np.ndarray, shifted.ShiftedSet]:
    """Labels and flag-label probabilities of the shifted validation, through the serving path."""
    m = classifier.manifest
    flag_index = m.labels.index(m.flag_label)
    data = shifted.build(samples, m, variants=variants, seed=seed, cache_dir=cache_dir)
    y = np.array([samples[i].label == m.flag_label for i in data.sample_index], dtype=int)
    return y, classifier.probabilities(data.images)[:, flag_index], data


def factor_table(y: np.ndarray, probs: np.ndarray, clean: np.ndarray, data: shifted.ShiftedSet,
                 threshold: float) -> list[dict[str, Any]]:
    """Per factor level: AUROC, sensitivity and specificity at the threshold, and how far the
    probability moved from the same picture read as a plain JPEG (`clean`, one per sample)."""
    levels = [shifted.factor_levels(r) for r in data.recipes]
    moved = probs - clean[data.sample_index]
    rows = []
    for factor in levels[0]:
        for level in sorted({lv[factor] for lv in levels}):
            mask = np.array([lv[factor] == level for lv in levels])
            at = metrics.at_threshold(y[mask], probs[mask], threshold)
            rows.append({"factor": factor, "level": level, "n": int(mask.sum()),
                         "auroc": metrics.roc_auc(y[mask], probs[mask]),
                         "sensitivity": at.sensitivity, "specificity": at.specificity,
                         "mean_shift": float(moved[mask].mean()),
                         "mean_abs_shift": float(np.abs(moved[mask]).mean())})
    return rows


def _factor_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| factor | level | variants | AUROC | sensitivity | specificity | "
             "mean change in p | mean abs change in p |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['factor']} | {r['level']} | {r['n']} | {r['auroc']:.4f} | {r['sensitivity']:.3f} | "
              f"{r['specificity']:.3f} | {r['mean_shift']:+.4f} | {r['mean_abs_shift']:.4f} |" for r in rows]
    return lines


def _plots(output: Path, y: np.ndarray, probs: np.ndarray, summary: dict[str, Any],
           names: list[str]) -> list[str]:
    output.mkdir(parents=True, exist_ok=True)
    return [plots.confusion_matrix(output, summary, names), plots.roc(output, y, probs, summary),
            plots.precision_recall(output, y, probs),
            plots.reliability(output, y, probs, summary["ece"])]


def evaluate_package(package: Path, data: Path, output: Path, fmt: str = "markdown",
                     training_log: str | None = None, holdout: str | Path | None = None,
                     shifted_variants: int = 0, shift_seed: int = 20261123,
                     cache_dir: str | Path = ".cache", field_shifts: str = "none",
                     field: bool = False, unseen_by_configs: list[str] | None = None) -> Path:
    """`holdout` (a training config) limits `data` to that run's validation patients;
    `unseen_by_configs` drops what those configs trained on; `shifted_variants` > 0 adds the
    shifted validation with that many recipes per image; `field` adds the groups and the
    prior-shift check of `field_validation`, and a column per population shift in `field_shifts`
    (comma-separated names, `all` or `none`)."""
    classifier = Classifier(package)
    m = classifier.manifest
    if holdout:
        samples = [s for s in holdout_samples(holdout) if s.label in m.labels]
    else:
        samples = [s for s in discover(data) if s.label in m.labels]
    if unseen_by_configs:
        samples = unseen_by(samples, list(unseen_by_configs))
    all_probs, skipped = score(classifier, [s.path for s in samples])
    keep = np.array([s.path not in set(skipped) for s in samples], dtype=bool)
    y = np.array([s.label == m.flag_label for s in samples], dtype=int)[keep]
    probs = all_probs[keep]
    summary = summarize(y, probs, m.threshold)
    names = [f"not {m.flag_label}", m.flag_label]
    images = _plots(output, y, probs, summary, names)
    log = Path(training_log) if training_log else package / "training_log.json"
    if log.is_file():
        images.append(plots.training_curves(output, json.loads(log.read_text())))
    source = f"the validation patients of {Path(holdout).name}" if holdout else data.name
    if unseen_by_configs:
        source += ", less the images " + ", ".join(Path(c).name for c in unseen_by_configs) + " trained on"
    notes = [f"Model {m.name} {m.version} on {source}: operating threshold {m.threshold:.4f} "
             f"({m.threshold_rule}); temperature {m.temperature:.3f}.",
             "Intervals are 95% percentile bootstrap intervals over images (1000 resamples)."]
    if skipped:
        notes.append(f"{len(skipped)} files could not be read and were left out.")
    results: dict[str, Any] = dict(summary)  # plain figures at the top level, as before
    columns = [("validation", summary)]
    extra: list[str] = []
    if shifted_variants > 0:
        sy, sprobs, sdata = score_shifted(classifier, samples, shifted_variants, shift_seed, cache_dir)
        shifted_summary = summarize(sy, sprobs, m.threshold)
        results["shifted_validation"] = shifted_summary
        columns.append(("shifted validation", shifted_summary))
        images += _plots(output / "shifted", sy, sprobs, shifted_summary, names)
        table = factor_table(sy, sprobs, all_probs, sdata, m.threshold)
        results["shifted_factors"] = table
        notes.append(f"Shifted validation: each of the {len(samples)} validation pictures re-acquired "
                     f"as {shifted_variants} DICOM files (seed {shift_seed}; recipes in "
                     "`cxrtriage.models.shifted`) and read back by the worker's own step "
                     "(`examine_file`). Its intervals treat the variants as independent, so they "
                     "are somewhat too narrow.")
        extra = ["", "## Shifted validation by factor", "",
                 "Change in p: the flag probability of the DICOM variant minus that of the same "
                 "picture read as a JPEG.", "", *_factor_markdown(table)]
    if field:
        from cxrtriage.models.field_validation import field_results, parse_shifts

        kept = [s for s, k in zip(samples, keep, strict=True) if k]
        results["field"], field_columns, field_lines = field_results(
            classifier, kept, y, probs, data, parse_shifts(field_shifts), shift_seed, cache_dir)
        columns += field_columns
        extra += field_lines
    (output / "metrics.json").write_text(json.dumps(results, indent=2))
    title = f"Evaluation of {m.name} {m.version}"
    rel = [str(Path(i).relative_to(output)) for i in images]
    report = output / ("report.html" if fmt == "html" else "report.md")
    render = _html if fmt == "html" else _markdown
    report.write_text(render(title, _rows(columns), rel, notes + extra))
    return report
