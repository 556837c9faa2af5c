"""The ``crctl`` command: the user-facing CLI over the coordinator's gRPC API, plus the
subcommands that run the daemons, check the host and drive the emulated-host testbed."""
