"""Start-up objects are frozen out of the garbage collector's full passes (steerguard.grpc_common.heap)."""

from __future__ import annotations

import gc

from steerguard.grpc_common.heap import freeze_startup_objects


def test_frozen_objects_leave_full_collections_and_new_garbage_is_still_collected() -> None:
    kept = [[i] for i in range(200_000)]  # a loaded model's many long-lived objects (lists: tracked)
    try:
        walked = len(gc.get_objects())  # what a full collection walks
        assert freeze_startup_objects() >= len(kept)
        assert len(gc.get_objects()) < walked - len(kept), "the frozen objects are no longer walked"

        class Node:
            other: object = None

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after the freeze
        del a, b
        assert gc.collect() >= 2, "garbage made after the freeze is collected"
    finally:
        gc.unfreeze()
        del kept
