"""The model commands, none of which touch the database: `predict`, `train`, `package` and
`evaluate`. Torch loads only inside them, never when the CLI is imported."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtriage.cli.handlers import add_command
from cxrtriage.cli.output import format_table
from cxrtriage.config import Settings

if TYPE_CHECKING:
    from cxrtriage.cli.handlers import Subparsers


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.models.predict import predict_paths

    rows = predict_paths([Path(p) for p in args.paths], Path(args.model or settings.model),
                         heatmaps=args.heatmap)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, ["path", "label", "probability", "flagged", "note"]))
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.models.packaging import package_run
    from cxrtriage.models.train_config import load_train_config
    from cxrtriage.models.training import train

    cfg = load_train_config(args.config_file, epochs=args.epochs)
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    train(cfg, run_dir, cache_dir=args.cache_dir)
    cache = Path(args.cache_dir) if args.cache_dir else None
    out = package_run(cfg, run_dir, Path(args.output or run_dir / "package"), args.config_file, cache)
    print(f"model package written to {out}")
    return 0


def cmd_package(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.models.packaging import Member, package_run
    from cxrtriage.models.train_config import load_train_config

    cfg = load_train_config(args.config_file)
    cache = Path(args.cache_dir) if args.cache_dir else None
    members = [Member(load_train_config(config), Path(run), Path(config)) for config, run in args.member]
    out = package_run(cfg, Path(args.run_dir), Path(args.output), args.config_file, cache, members,
                      half=args.half)
    print(f"model package written to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from cxrtriage.models.evaluation import evaluate_package

    report = evaluate_package(Path(args.package), Path(args.data), Path(args.output),
                              fmt=args.format, training_log=args.training_log, holdout=args.holdout,
                              shifted_variants=args.variants if args.shifted else 0,
                              shift_seed=args.shift_seed, cache_dir=args.cache_dir, field=args.field,
                              field_shifts=args.population_shifts if args.field else "none",
                              unseen_by_configs=args.unseen_by)
    print(f"report written to {report}")
    return 0


def register(sub: Subparsers) -> None:
    p = add_command(sub, "predict", cmd_predict, "classify DICOM, PNG or JPEG files or folders")
    p.add_argument("paths", nargs="+")
    p.add_argument("--model", help="model package folder (default: CXRTRIAGE_MODEL)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--heatmap", action="store_true",
                   help="write a heat map PNG (class activation map) next to each image")
    p = add_command(sub, "train", cmd_train, "train a model from a TOML config, resuming if interrupted")
    p.add_argument("config_file")
    p.add_argument("--run-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--epochs", type=int)
    p.add_argument("--output", help="package folder (default: RUN_DIR/package)")
    p = add_command(sub, "package", cmd_package, "package the best checkpoint of a finished training run")
    p.add_argument("config_file")
    p.add_argument("run_dir")
    p.add_argument("output")
    p.add_argument("--cache-dir")
    p.add_argument("--member", nargs=2, action="append", default=[], metavar=("CONFIG", "RUN_DIR"),
                   help="another run to average with (an ensemble); repeatable")
    p.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    p = add_command(sub, "evaluate", cmd_evaluate, "evaluate a model package on labelled data")
    p.add_argument("package")
    p.add_argument("data", help="class folders or CSV")
    p.add_argument("--output", default="evaluation")
    p.add_argument("--format", choices=["markdown", "html"], default="markdown")
    p.add_argument("--training-log", help="history.json of the training run, for curves")
    p.add_argument("--holdout", metavar="CONFIG.toml",
                   help="evaluate only the validation patients of this training config")
    p.add_argument("--shifted", action="store_true",
                   help="add the shifted validation: the same pictures as DICOM through the serving path")
    p.add_argument("--variants", type=int, default=2, help="shifted DICOM variants per picture")
    p.add_argument("--shift-seed", type=int, default=20261123)
    p.add_argument("--cache-dir", default=".cache", help="where the shifted validation is cached")
    p.add_argument("--field", action="store_true",
                   help="add the field validation: worst groups, the prior-shift check and the "
                        "population-shift set (models/field_validation.py)")
    p.add_argument("--population-shifts", default="all",
                   help="comma-separated population shifts for --field: all (the default), none, "
                        "or names from models/population_shift.py")
    p.add_argument("--unseen-by", action="append", default=[], metavar="CONFIG.toml",
                   help="leave out the images this training config trained on; repeatable")
