#!/usr/bin/env bash
# Regenerates the checked-in Python stubs (*_pb2.py, *_pb2.pyi, *_pb2_grpc.py) next to the .proto files.
# The stubs are committed; CI runs `make proto-check`, which regenerates them and fails on any diff.
# Files are swapped in one at a time (never deleted first), so a process importing them meanwhile never
# finds a stub missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
"$PY" -m grpc_tools.protoc -I proto --python_out="$TMP" --pyi_out="$TMP" --grpc_python_out="$TMP" \
  proto/agentrt/v1/*.proto
for f in proto/agentrt/v1/*_pb2*.py proto/agentrt/v1/*_pb2*.pyi; do
  [ -e "$f" ] || continue
  [ -e "$TMP/agentrt/v1/$(basename "$f")" ] || rm -f "$f"
done
for f in "$TMP"/agentrt/v1/*_pb2*; do
  b=$(basename "$f")
  cp "$f" "proto/agentrt/v1/.$b.tmp" && mv -f "proto/agentrt/v1/.$b.tmp" "proto/agentrt/v1/$b"
done
touch proto/agentrt/__init__.py proto/agentrt/v1/__init__.py proto/agentrt/py.typed
