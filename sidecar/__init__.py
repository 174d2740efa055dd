"""HTTP guard proxy in front of a chatbot that cannot be changed.

Each chat request is classified by the classifier service over gRPC; safe ones
are forwarded to the upstream byte-for-byte, unsafe ones are blocked, steered
(answered by the steer service) or flagged as the policy says. Importing this
package is cheap: heavy modules (aiohttp, grpc) load only when a server starts.
"""
