"""Data: sources decoded once into a cache, the built-in synthetic faces, per-stage streams."""
