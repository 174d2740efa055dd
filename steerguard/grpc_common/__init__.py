"""Shared gRPC server plumbing: server factory, error mapping, auth, TLS, health, shutdown."""
