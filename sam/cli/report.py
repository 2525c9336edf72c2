"""``sam-report DIR...``: tables and plots from the results.json files below DIR.

The directories are arguments (sweeps, or single runs: each is searched for results.json);
``runs=DIR`` / ``runs=[DIR,...]``, the other tools' spelling, is accepted with a hint.
"""

from __future__ import annotations

import sys

from sam.cli._hydra import runs_as_arguments
from sam.errors import UserError


def report_main() -> None:
    """``sam-report DIR...``: exits with ``sam.report.main``'s status."""
    from sam.report import main

    try:
        argv = runs_as_arguments("sam-report", sys.argv[1:])
    except UserError as err:
        print(f"sam-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(argv))


if __name__ == "__main__":
    report_main()
