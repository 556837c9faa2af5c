"""crctl's shared package: generated protocol code (``crctl.v1``) and the little common code
the coordinator, the agents and the CLI all use (config, logging, errors, keys, wire codec)."""

__version__ = "0.1.0"
