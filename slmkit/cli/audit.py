"""`slm audit`: a thin call of slmkit.api.audit."""

from __future__ import annotations

import json

from slmkit import api
from slmkit.cli.command import add_command


def register(subparsers) -> None:
    add_command(
        subparsers, "audit", _audit_arguments, _audit,
        help="can a run's validation figures (or a dataset's split) be trusted? one verdict line",
        description="Audit a run directory or a dataset directory: train/validation n-gram overlap, validation "
                    "documents copied from training, near-duplicates across the split, and for a run the "
                    "train/validation gap over its evaluations, losses near zero and the honest-number warnings "
                    "it logged. Ends in one verdict line with the reasons.")


def _audit_arguments(audit) -> None:
    audit.add_argument("path", metavar="RUN_OR_DATASET", help="a run directory (slm train) or a dataset (slm prepare)")
    audit.add_argument("--json", action="store_true", help="print JSON instead of the text")


def _audit(args) -> int:
    report = api.audit(args.path)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    return 0
