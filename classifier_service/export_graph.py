"""Export one compiled path's graph in a process of its own (see ``accelerated.export_in_child``).

    python -m classifier_service.export_graph KIND MODEL FOLDER LAYER [LAYER ...]

KIND is ``trunk`` or ``passages``; the graph is written to FOLDER/trunk.onnx.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from classifier_service.accelerated import KINDS, export_graph

    if len(argv) < 4 or argv[0] not in KINDS:
        print(__doc__, file=sys.stderr)
        return 2
    kind, model, folder, *layers = argv
    export_graph(kind, Path(model), tuple(int(x) for x in layers), Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
