"""Processed-data contract, raw loaders, protocols and candidate sampling (docs/design.md §3)."""
