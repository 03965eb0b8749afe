"""Shared plumbing of the training subcommands: clear one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from tqdm import tqdm

from qc_cloud.training.errors import TrainingError
from qc_contract.model_manifest import ManifestError
from qc_contract.preprocess import PreprocessError

EXIT_USER_ERROR = 2


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _configure_logging() -> None:
    logger = logging.getLogger("qc_cloud")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def run_guarded(name: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; a problem with the user's input (data, config, manifest) is printed as one line and
    exits with status 2. Anything else is a bug and keeps its traceback."""
    _configure_logging()
    try:
        return body(args)
    except (TrainingError, ManifestError, PreprocessError) as exc:
        print(f"qc_cloud {name}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"qc_cloud {name}: interrupted", file=sys.stderr)
        return 130


def print_summary(run) -> None:
    """A few lines a person reads after a run (the full story is in report.md)."""
    m, bands = run.evaluation.metrics, run.evaluation.metrics["bands"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    print(f"model package: {run.package_dir} (version {run.manifest.version}, sha256 {run.manifest.sha256[:12]})")
    print(
        f"test split: {m['n_images']} images  accuracy {f(m['accuracy'])}  precision {f(m['precision'])}  "
        f"recall {f(m['recall'])}  F1 {f(m['f1'])}  ROC AUC {f(m['roc_auc'])}"
    )
    print(
        f"decision bands {bands['low']}/{bands['high']}: re-inspect {f(bands['fraction_reinspect'])}  "
        f"defect escape {f(bands['defect_escape_rate'])}  false reject {f(bands['false_reject_rate'])}"
    )
    print(f"report: {run.paths['markdown']}")
