"""Whole agent turns on LangGraph, and the item store behind ``runtime.store.SidecarStore``.

``graph.py`` is the one place the order of a turn's stages is written; ``items.py`` is the server side
of the LangGraph store; ``llm.py`` talks to OpenAI-compatible endpoints.
"""
