"""Preference stage: S-DPO and the DPO family on top of the SFT recommender (docs/design.md §6)."""
