"""Leaf package shared by memory/, guards/, tools/ and runtime/: domain errors, entropy math, the
embedder and the vector and lexical indexes. It imports nothing else of ours and no protobuf."""
