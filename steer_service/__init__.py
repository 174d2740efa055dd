"""gRPC streaming generation with per-request refusal and category steering.

Layout (servicers stay thin; the work is in the engine):

- :mod:`steer_service.config`: limits and engine settings;
- :mod:`steer_service.jobs`: a validated request, its events and its handle;
- :mod:`steer_service.detok`: incremental detokenisation for streaming;
- :mod:`steer_service.engine`: the continuous-batching decode loop;
- :mod:`steer_service.service`: validation + engine, independent of gRPC;
- :mod:`steer_service.convert` / :mod:`steer_service.servicer`: protobuf edges;
- :mod:`steer_service.server` / :mod:`steer_service.cli`: process wiring.
"""
