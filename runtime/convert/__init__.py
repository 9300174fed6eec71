"""proto <-> domain conversion, one module per service; ``common`` holds what several of them share."""
