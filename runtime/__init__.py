"""The sidecar: gRPC server, configuration, persistence and the composition of memory, guards and tools."""
