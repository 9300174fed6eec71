"""Tool registry, argument validation, executors (HTTP, MCP, builtin) and tool search.

Transport-neutral: nothing here imports ``runtime``, grpc or protobuf. The sidecar composes it in
``runtime/services/tool.py`` and ``runtime/tool_invoke.py``.
"""
