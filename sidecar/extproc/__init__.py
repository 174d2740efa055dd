"""An Envoy ``ext_proc`` front end: the sidecar's request checks inside an existing Envoy gateway.

Teams running Envoy (Istio, Envoy Gateway) point the gateway's external
processing filter at ``steerguard serve extproc`` instead of adding a proxy
container to every pod. Envoy sends each request's headers and (buffered)
body over ``envoy.service.ext_proc.v3.ExternalProcessor/Process``; chat
routes are parsed and judged exactly as the sidecar judges them, under the
same policy file; an unsafe request gets an ``ImmediateResponse`` (the
refusal in the upstream's shape, or an error), a safe one continues with
the verdict headers added. Generated code comes from the ``xds-protos``
package (``pip install steerguard[extproc]``).
"""
