#!/usr/bin/env bash
# Regenerates the checked-in Python stubs (*_pb2.py, *_pb2.pyi, *_pb2_grpc.py) next to the .proto files.
# The stubs are committed; CI runs `make proto-check`, which regenerates them and fails on any diff.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -f proto/agentrt/v1/*_pb2*.py proto/agentrt/v1/*_pb2*.pyi
"$PY" -m grpc_tools.protoc -I proto \
  --python_out=proto --pyi_out=proto --grpc_python_out=proto \
  proto/agentrt/v1/*.proto
touch proto/agentrt/__init__.py proto/agentrt/v1/__init__.py proto/agentrt/py.typed
