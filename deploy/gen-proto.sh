#!/usr/bin/env bash
# Regenerates the protobuf / gRPC code in crctl/v1/ from proto/crctl/v1/*.proto.
# Usage: deploy/gen-proto.sh            write the generated code
#        deploy/gen-proto.sh --check    fail if the committed generated code is stale
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
export PATH="$(dirname "$python"):$PATH"   # protoc plugins (mypy-protobuf) live beside it
out=$here
if [ "${1:-}" = "--check" ]; then
    out=$(mktemp -d)
    out_tmp=$out
fi
mkdir -p "$out/crctl/v1"
cd "$here"
# google.longrunning comes with googleapis-common-protos, whose operations.proto is shipped as
# operations_proto.proto (its module registers it under the standard name): seen under that.
common=$("$python" -c 'import google.longrunning, pathlib; print(pathlib.Path(google.longrunning.__path__[0]).parent.parent)')
standard=$(mktemp -d)
trap 'rm -rf "$standard" ${out_tmp:-}' EXIT
mkdir -p "$standard/google/longrunning"
ln -s "$common/google/longrunning/operations_proto.proto" "$standard/google/longrunning/operations.proto"
"$python" -m grpc_tools.protoc -Iproto -I"$standard" -I"$common" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" --mypy_grpc_out="$out" \
    proto/crctl/v1/*.proto
printf '"""Generated protobuf and gRPC code (deploy/gen-proto.sh). Never edit by hand."""\n' \
    >"$out/crctl/v1/__init__.py"
if [ "${1:-}" = "--check" ]; then
    if ! diff -r -q "$out/crctl/v1" "$here/crctl/v1" >/dev/null; then
        diff -r "$out/crctl/v1" "$here/crctl/v1" | head -40 >&2
        echo "gen-proto: crctl/v1 is stale; run deploy/gen-proto.sh and commit" >&2
        exit 1
    fi
    echo "gen-proto: crctl/v1 is up to date"
fi
