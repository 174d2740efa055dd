"""``python -m devstack`` runs the dev tools' command (``up``)."""

import sys

from devstack.cli import main

sys.exit(main())
