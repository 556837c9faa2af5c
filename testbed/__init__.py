"""Emulated hosts on one machine: network namespaces on a bridge, each running a crctl agent,
with a coordinator in the root namespace. What `crctl testbed` drives and the e2e tests use."""
