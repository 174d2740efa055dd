"""The classifier gRPC service: ``steerguard.v1.Classifier`` over a probe with early exit.

Layout: :mod:`.core` (cache, single-flight, micro-batching, probe),
:mod:`.batcher` (the micro-batching thread), :mod:`.wire` (lenient request
decoding), :mod:`.servicer` (decode, call the core, encode), :mod:`.server`
(the gRPC server), :mod:`.cli` (``steerguard serve classifier``) and
:mod:`.metrics`. Importing the package imports nothing heavy.
"""
