"""registry-svc: service registry and discovery server."""
