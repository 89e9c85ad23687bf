"""Ranking metrics shared by every stage (docs/design.md §8)."""
