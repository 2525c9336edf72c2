"""``sam-report DIR...``: tables and plots from the results.json files below DIR."""

from __future__ import annotations

import sys


def report_main() -> None:
    """``sam-report DIR...``: exits with ``sam.report.main``'s status."""
    from sam.report import main

    sys.exit(main())


if __name__ == "__main__":
    report_main()
