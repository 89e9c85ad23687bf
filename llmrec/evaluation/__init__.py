"""Ranking metrics shared by every stage (DESIGN.md §8)."""
