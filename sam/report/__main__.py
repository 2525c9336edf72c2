"""``python -m sam.report DIR...`` is ``sam-report DIR...``."""

import sys

from sam.report.command import main

sys.exit(main())
