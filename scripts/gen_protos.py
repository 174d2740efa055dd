"""Generate the Python gRPC code in ``steerguard/v1`` from ``protos/``.

One command produces every generated file, and ``--check`` regenerates into a
temporary directory and fails when the committed files differ, so CI catches a
``.proto`` edited without regenerating.

    python scripts/gen_protos.py          # write steerguard/v1/*_pb2*.py
    python scripts/gen_protos.py --check  # exit 1 on drift
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("steerguard") / "v1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc over every .proto and return the generated files."""
    from grpc_tools import protoc  # imported lazily: a dev-only dependency

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / PACKAGE_DIR).glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when generated code drifts")
    ns = parser.parse_args()
    if not ns.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = sorted((ROOT / PACKAGE_DIR).glob("*_pb2*.py*"))
        names_fresh = {p.name for p in fresh}
        names_committed = {p.name for p in committed}
        drift = sorted(names_fresh ^ names_committed)
        for p in fresh:
            other = ROOT / PACKAGE_DIR / p.name
            if other.exists() and not filecmp.cmp(p, other, shallow=False):
                drift.append(p.name)
        if drift:
            print("generated protobuf code drifts from protos/: " + ", ".join(drift), file=sys.stderr)
            print("run: python scripts/gen_protos.py", file=sys.stderr)
            return 1
    print("generated protobuf code matches protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
