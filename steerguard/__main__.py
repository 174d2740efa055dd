"""``python -m steerguard`` runs the CLI."""

import sys

from steerguard.cli import main

sys.exit(main())
