"""Generated protobuf and gRPC code (deploy/gen-proto.sh). Never edit by hand."""
