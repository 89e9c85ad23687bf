"""In-learning reweighting of IFairLRS (Jiang et al., WWW 2024), docs/design.md §7.

    W_G = GH_train(G) / GT_train(G)
where GH_train is the share of G among the items of the training samples' histories and GT_train the share
of G among the training samples' targets (shares as in `metrics.py`: membership mass over total mass). A group
that appears more often in histories than as a next item gets W_G > 1: the model is pushed to recommend it
as often as users consume it. Each training sample's loss is multiplied by
    w_i = mean of W_G over the groups of its target (membership-weighted: sum_G M[t,G] W_G / sum_G M[t,G]),
optionally normalised to mean 1 over the training set, so the learning rate means the same as without
reweighting.

Pass the `history` and `target` columns of `samples_train` (as the authors do with their training prompts):
an item counts once per training prompt whose history shows it.

Differs from the authors' released code, which computes
    loss = mean(weights * mean(token losses of the whole micro-batch))
i.e. every sample of a micro-batch is scaled by the micro-batch's MEAN weight. Then a sample's weight depends
on which samples happen to share its micro-batch, and as batches grow it tends to the training mean (1): the
reweighting fades away, and with micro-batch size 1 only it matches the paper. Here each sample's loss is
multiplied by its own weight, which is what the paper's formula says: `HybridLM.loss(batch, weights=w)` in SFT and
`llmrec.preference.losses.weighted_mean(losses, w)` in S-DPO.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmrec.data.dataset import ProcessedDataset
from llmrec.evaluation.groups import ItemGroups, item_groups


def group_weights(train_histories: Sequence[Sequence[int] | np.ndarray], train_targets: Sequence[int] | np.ndarray,
                  groups: ItemGroups) -> np.ndarray:
    """W [G] = (share of G among training history items) / (share of G among training targets).

    A group with no training target gets W_G = 1.0 (neutral): no training sample has its target there, so
    the value is never used by `sample_weights`; it only keeps the vector finite for logging. A group with
    targets but no history items gets W_G = 0 (the formula's value).
    """
    parts = [np.asarray(h, dtype=np.int64).reshape(-1) for h in train_histories]
    hist_mass = groups.mass(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64), what="history item")
    target_mass = groups.mass(np.asarray(train_targets, dtype=np.int64), what="target item")
    if hist_mass.sum() <= 0 or target_mass.sum() <= 0:
        return np.ones(groups.n_groups, dtype=np.float64)
    gh = hist_mass / hist_mass.sum()
    gt = target_mass / target_mass.sum()
    out = np.ones(groups.n_groups, dtype=np.float64)
    has_targets = gt > 0
    out[has_targets] = gh[has_targets] / gt[has_targets]
    return out


def sample_weights(targets: Sequence[int] | np.ndarray, weights: np.ndarray, groups: ItemGroups,
                   normalise: bool = True) -> np.ndarray:
    """[N] per-sample loss weights w_i = membership-weighted mean of W_G over the groups of target i.

    Args:
        targets: [N] target item ids (all training samples: normalising a subset, e.g. one batch, would
            reintroduce the batch dependence this function exists to avoid).
        weights: [G] group weights W from `group_weights`.
        groups: the grouping.
        normalise: rescale so that the mean over `targets` is 1.
    A target without any group (an item without genres) gets weight 1.0 before normalisation.
    """
    ids = np.asarray(targets, dtype=np.int64).reshape(-1)
    groups.mass(ids, what="target item")  # range check with a clear error
    m = groups.membership[ids]  # [N, G]
    total = m.sum(axis=1)
    w = np.where(total > 0, (m @ np.asarray(weights, dtype=np.float64)) / np.where(total > 0, total, 1.0), 1.0)
    if normalise and w.size:
        mean = float(w.mean())
        if mean > 0:
            w = w / mean
    return w


def training_sample_weights(data: ProcessedDataset, kind: str, n_groups: int = 5, split_multi: bool = False,
                            normalise: bool = True) -> np.ndarray:
    """[M] the loss weight of every sample of the FULL train split (row order), for `train-llm` and `train-sdpo`
    `--fairness-weights KIND`: groups and W_G from the training samples only, w_i per sample, normalised to mean 1
    over the whole training set (never over a subset or a batch)."""
    groups = item_groups(data, kind, n_groups, split_multi)
    train = data.split("train")
    w = group_weights(train["history"].tolist(), train["target"].to_numpy(), groups)
    return sample_weights(train["target"].to_numpy(), w, groups, normalise)
