"""``DescribeBundle``: the bundle a service serves, as both services answer it.

Both the classifier and the steer service describe their bundle the same way,
so a client (the sidecar) can check that they serve the same one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steerguard.v1 import common_pb2

if TYPE_CHECKING:  # the bundle needs torch; this module is imported by servers that have it
    from steerguard.bundle import Bundle


def bundle_info(bundle: Bundle) -> common_pb2.BundleInfo:
    info = bundle.info()
    model = dict(info.get("model", {}))
    return common_pb2.BundleInfo(
        bundle_id=str(info["bundle_id"]),
        model_id=str(model.get("name", "")),
        model_sha256=str(model.get("sha256", "")),
        categories=list(info["categories"]),
        probe_layer=int(info["probe_layer"]),
        steer_layers=[int(x) for x in info["steer_layers"]],
        threshold=float(info["threshold"]),
        default_strength=float(info["default_strength"]),
        created_at=str(info.get("created_at", "")),
    )
