"""The crctl agent: one per host; runs ranks, checkpoints and restores them with CRIU on the
coordinator's orders."""
