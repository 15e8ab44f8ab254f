"""The human-readable model card, generated from the manifest so the two cannot disagree."""

from __future__ import annotations

from typing import Any

from cxrtriage.models.manifest import Manifest
from cxrtriage.models.model_input import preprocessing_changes
from cxrtriage.models.train_config import TrainConfig


def _ci(metric: dict[str, Any], name: str) -> str:
    low, high = metric[f"{name}_95ci"]
    return f"{metric[name]:.3f} (95% CI {low:.3f}-{high:.3f})"


def _architecture(m: Manifest) -> str:
    members = m.training_data.get("members", [])
    if len(members) <= 1:
        return (f"torchvision `{m.architecture}` with a single-channel stem, trained **from scratch**\n"
                "  (no ImageNet weights were available)")
    rows = "\n".join(f"  | {r['name']} | {r['seed']} | {r['epochs_run']} | {r['best_epoch']} | "
                     f"{r['val_auroc']:.4f} |" for r in members)
    return (f"an ensemble of {len(members)} torchvision `{m.architecture}` networks with a "
            "single-channel stem,\n  each trained **from scratch** (no ImageNet weights were "
            "available) with its own seed on the same\n  patients; their logits are averaged. "
            f"Weights are stored as {m.training_data.get('weights_dtype', 'float32')}.\n\n"
            "  | member | seed | epochs run | best epoch | validation AUROC alone |\n"
            f"  | --- | --- | --- | --- | --- |\n{rows}")


def _table(columns: list[tuple[str, dict[str, Any]]]) -> str:
    rows = [("AUROC", lambda v: _ci(v, "auroc")), ("accuracy", lambda v: _ci(v, "accuracy")),
            ("sensitivity", lambda v: _ci(v, "sensitivity")),
            ("specificity", lambda v: _ci(v, "specificity")),
            ("precision", lambda v: f"{v['precision']:.3f}"), ("F1", lambda v: f"{v['f1']:.3f}"),
            ("expected calibration error", lambda v: f"{v['ece']:.3f}"),
            ("confusion (tp/fp/tn/fn)", lambda v: f"{v['tp']}/{v['fp']}/{v['tn']}/{v['fn']}"),
            ("images (positives)", lambda v: f"{v['n_images']} ({v['n_positive']})")]
    lines = ["| metric | " + " | ".join(name for name, _ in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    lines += [f"| {label} | " + " | ".join(cell(v) for _, v in columns) + " |" for label, cell in rows]
    return "\n".join(lines)


def _validation_section(m: Manifest) -> str:
    val = m.metrics["validation"]
    columns = [("validation patients", val)]
    shifted = m.metrics.get("shifted_validation")
    text = (f"Held-out patients: {val['n_images']} images, {val['n_positive']} {m.flag_label}. "
            "Intervals are 95% percentile bootstrap intervals over images (1000 resamples); all "
            f"figures at the operating threshold {m.threshold:.4f}.")
    if shifted:
        columns.append(("shifted validation (DICOM)", shifted))
        text += f"""

The **shifted validation** is the same held-out patients re-acquired as DICOM
({shifted['n_images']} files, {m.metrics.get('shifted_description', 'several per picture')}):
detector response curves (linear, power, log), part of the stored range used, 8/12/16 bits,
a window or none, MONOCHROME1, aspect ratios 0.82 and 1.22 (squashed back to the square by the
serving code, as the training pictures were),
resampling to 160-1024 px detectors, and uncompressed, RLE, JPEG 2000 (lossless and lossy) and
JPEG baseline encodings. Each file is read back by the worker's own step (`examine_file`), so the
figures are those of the DICOM path. Its intervals treat the variants of one picture as
independent and are somewhat too narrow."""
    population = m.metrics.get("population_shift")
    if population:
        columns.append(("population shift, pooled", population))
        text += f"""

The **population shift** is the same held-out patients with the variation that acquisition
simulation does not cover ({m.metrics.get('population_description', 'several shifts')}):
rotation and positioning, collimation (dark bands and a smaller field), burned-in markers and
text, tubes and lines, low dose (noise and a flatter range), another crop of the chest, and all
of them at once (`cxrtriage.models.population_shift`). Its pooled intervals treat the shifts of
one picture as independent and are somewhat too narrow. `cxrtriage evaluate --field` gives each
shift alone, worst groups, and the prior-shift check."""
    return text + "\n\n" + _table(columns)


def _preprocessing(m: Manifest) -> str:
    return "".join(f"; since version {version}, {text}"
                   for version, text in preprocessing_changes("1", m.preprocessing_version).items())


def _normalisation(m: Manifest) -> str:
    if m.input_normalisation == "equalise":
        return ("rank-equalised within the picture (so any increasing change of intensity, such as "
                "a detector response curve, a window that clips nothing or the bit depth, gives the "
                "network the same input)")
    return "intensities as stored after the DICOM pipeline"


def _test_time(m: Manifest) -> str:
    if not m.test_time_crops:
        return ""
    crops = ", ".join(f"{c:.0%}" for c in m.test_time_crops)
    return (f"\n- Test-time views: the logits are the mean over the picture and its central crops of "
            f"{crops} of the side, each resized back; heat maps are of the whole picture.")


def _threshold_section(m: Manifest) -> str:
    note = m.metrics.get("threshold_note", "")
    return (f"{m.threshold:.4f}, chosen by the rule `{m.threshold_rule}`, after temperature "
            f"scaling (T = {m.temperature:.3f}).{(chr(10) * 2 + note) if note else ''}")


def _regularisers(cfg: TrainConfig) -> str:
    used = [(cfg.mixup_alpha, f"mixup (alpha {cfg.mixup_alpha})"),
            (cfg.ema_decay, f"an exponential moving average of the weights (decay {cfg.ema_decay}), "
                            "which is what is validated and kept"),
            (cfg.augment.erase, f"random erasing (p {cfg.augment.erase})")]
    return "".join(f", {text}" for value, text in used if value)


def _augmentation(cfg: TrainConfig) -> str:
    a = cfg.augment
    text = (f"rotation ±{a.rotation_deg}°, shift {a.shift}, zoom {a.zoom}, shear {a.shear_deg}°, "
            f"brightness/contrast/gamma {a.brightness}/{a.contrast}/{a.gamma}, "
            f"horizontal flip {'on' if a.hflip else 'off'}")
    acquisition = [(a.aspect, f"aspect ratio stretched and squashed back {a.aspect}"),
                   (a.response, f"log or exponential detector response {a.response}"),
                   (a.window, f"random window {a.window}"), (a.resample, f"resampling {a.resample}"),
                   (a.noise, f"noise sd {a.noise}")]
    chosen = [label for value, label in acquisition if value]
    return text + (f"; acquisition (probabilities): {', '.join(chosen)}" if chosen else "")


def _expectation(m: Manifest) -> str:
    text = m.metrics.get("expectation")
    return f"\n## Expected on unseen patients\n{text}\n" if text else ""


def render_card(m: Manifest, cfg: TrainConfig, history: list[dict[str, Any]]) -> str:
    data = m.training_data
    population = m.intended_population.get("description", "not stated")
    return f"""# Model card: {m.name} {m.version}

**Triage aid, not for diagnostic use.** It flags chest radiographs for earlier review by a
radiologist; it does not replace the radiologist's read.

## What it does
- Input: one frontal chest radiograph, single channel, resized to {m.input_size} x {m.input_size}
  (preprocessing version {m.preprocessing_version}{_preprocessing(m)}), {_normalisation(m)}, then
  normalised with mean {m.mean} and std {m.std}.{_test_time(m)}
- Output: probabilities for {", ".join(m.labels)} (in that order), temperature-scaled
  (T = {m.temperature:.3f}).
- Flag: {m.flag_label} when its probability is at least **{m.threshold:.4f}**.
- Architecture: {_architecture(m)}
- Weights sha256: `{m.weights_sha256}`; device UID in SRs: `{m.device_uid}`.

## Intended population
{population}. Images outside it (adults, lateral views, other body parts) are outside what the
model was trained and measured on; the pipeline records a warning when the patient's age is outside.

## What it is not for
- **Adults** or children outside 1-5 years: it has never seen them.
- **Lateral views** and other body parts: the pipeline's gate skips them; `predict` will score
  anything it is given, and such a score means nothing.
- **Other diseases** (tuberculosis, effusion, nodules, COVID-19, ...): it answers only "pneumonia
  or normal" and will not flag other findings; a normal answer does not mean a normal chest.
- Diagnosis: it is a triage aid that reorders a worklist.

## Training data
{data.get("description", "")}

Attribution (CC BY 4.0): Kermany, Daniel; Zhang, Kang; Goldbaum, Michael (2018), "Labeled Optical
Coherence Tomography (OCT) and Chest X-Ray Images for Classification", Mendeley Data, v2,
doi:10.17632/rscbjbr9sj.2. Described in Kermany et al., Cell 172(5), 2018.

- Split: {data.get("split", "")}. Patients were parsed from file names; no patient is in both splits.
- Training: {data.get("train_images")} images from {data.get("train_patients")} patients.
  Validation: {data.get("val_images")} images from {data.get("val_patients")} patients.
- The official test split was withheld from this project and never used.
- Recipe: {cfg.epochs} epochs at most ({data.get("epochs_run")} run, best epoch {data.get("best_epoch")}),
  {cfg.optimizer} lr {cfg.lr}, {cfg.schedule} schedule, balance = {cfg.balance}, loss = {cfg.loss},
  label smoothing {cfg.label_smoothing}{_regularisers(cfg)}; augmentation: {_augmentation(cfg)}.
  The config is `train_config.toml`;
  the per-epoch log is `training_log.json`.{(chr(10) + "- " + data["note"]) if data.get("note") else ""}

## Validation figures
{_validation_section(m)}

## Operating threshold
{_threshold_section(m)}
{_expectation(m)}
## Limitations
- One hospital, one population (children aged 1-5), AP views: figures will not transfer to adults,
  PA views, other scanners or other hospitals without local validation.
- Validation images come from the same source as training; published work on this set shows lower
  accuracy on its official test split than on internal validation.
- Pneumonia labels are image-level; the model does not localise disease (heat maps are an aid,
  not evidence), and it cannot distinguish bacterial from viral pneumonia.
- Low input resolution ({m.input_size} px) limits subtle findings.
"""
