"""Item-side fairness (IFairLRS; Jiang et al., "Item-side Fairness of Large Language Model-based Recommendation
System", WWW 2024), docs/design.md §7.

- `groups`: item groups (popularity quintiles from training interactions, or genres) as a membership matrix;
- `metrics`: GH, GP@K, GU@K, MGU@K, DGU@K on ranked lists;
- `weights`: in-learning reweighting (group weights W_G and per-sample loss weights w_i);
- `rerank`: post-learning re-ranking (group adjustment U_G measured on valid, alpha chosen on valid).
Everything here is a pure function of arrays; the training and evaluation stages wire it in.
"""
