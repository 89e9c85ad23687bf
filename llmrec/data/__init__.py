"""Processed-data contract, raw loaders, protocols and candidate sampling (DESIGN.md §3)."""
