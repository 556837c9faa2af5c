"""The crctl coordinator: gRPC API for people and schedulers, ZeroMQ control plane for agents,
durable state in SQLite, and the two-phase checkpoint barrier."""
