"""Generated gRPC code for the ``steerguard.v1`` protobuf package.

Produced by ``python scripts/gen_protos.py`` from ``protos/``; never edit the
``*_pb2*.py`` files by hand (CI checks them for drift).
"""
