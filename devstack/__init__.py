"""Development tools, apart from the product: the local stack, fakes, the demo chatbot, test fixtures.

Not installed with steerguard (nor baked into its image): they run from a
checkout, as ``python -m devstack up [--smoke]``. No module of steerguard,
classifier_service, steer_service or sidecar imports from here
(tests/test_architecture.py checks).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose ``python -m devstack...`` finds this checkout, whatever the working directory."""
    env = dict(os.environ if base is None else base)
    parts = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def console_script(name: str) -> str | None:
    """The installed console script ``name``: beside this interpreter first (a virtualenv that was
    never activated), then on ``PATH``."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)
