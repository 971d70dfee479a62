"""Code every model family shares (checkpoint I/O first). Families import from here, never each other."""
