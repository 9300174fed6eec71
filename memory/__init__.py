"""Conversation memory: lossless raw messages, derived multi-granularity units, GMM association, and an
entropy router over hybrid dense (FAISS) + lexical (BM25) retrieval. Never imports runtime/ or protobuf."""
