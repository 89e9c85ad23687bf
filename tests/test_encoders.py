"""Encoder contract: shapes, causality, left-padding invariance, truncation, errors, losses, windows."""

import numpy as np
import pytest
import torch
from tiny import TINY_ENCODERS

from llmrec.encoders import ENCODERS, SequentialEncoder, build_encoder, pad_left
from llmrec.encoders.datamodule import collate_windows, sequence_windows
from llmrec.encoders.losses import full_softmax_loss, sample_negatives, sampled_bce_loss
from llmrec.encoders.mostpop import MostPop
from llmrec.base.errors import ConfigError

N_ITEMS = 30
TRAINABLE = list(TINY_ENCODERS)


def tiny(name: str) -> SequentialEncoder:
    torch.manual_seed(0)
    return build_encoder(name, N_ITEMS, **TINY_ENCODERS[name]).eval()


def batch(seed: int = 0, B: int = 4, L: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, L + 1, size=B)
    lengths[0] = L
    return pad_left([rng.integers(1, N_ITEMS + 1, size=n) for n in lengths], max_length=L)


@pytest.mark.parametrize("name", TRAINABLE)
def test_shapes(name):
    enc = tiny(name)
    seq, lengths = batch()
    h = enc(seq, lengths)
    assert h.shape == (4, 16)
    assert enc.item_embeddings().shape == (N_ITEMS + 1, 16)
    assert enc.score_all(h).shape == (4, N_ITEMS + 1)
    assert enc.forward_all(seq).shape == (4, seq.size(1), 16)


@pytest.mark.parametrize("name", TRAINABLE)
def test_last_position_of_forward_all_is_forward(name):
    enc = tiny(name)
    seq, lengths = batch()
    seq, lengths = seq[:, -enc.max_length:], lengths.clamp(max=enc.max_length)
    torch.testing.assert_close(enc.forward_all(seq)[:, -1], enc(seq, lengths), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TRAINABLE)
def test_causality_later_items_do_not_change_earlier_outputs(name):
    enc = tiny(name)
    seq, _ = batch(L=10)
    changed = seq.clone()
    changed[:, 7] = changed[:, 7] % N_ITEMS + 1  # a different real item at column 7
    before, after = enc.forward_all(seq), enc.forward_all(changed)
    torch.testing.assert_close(before[:, :7], after[:, :7], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


@pytest.mark.parametrize("name", TRAINABLE)
def test_extra_left_padding_does_not_change_the_output(name):
    enc = tiny(name)
    histories = [[3, 5, 7], [1], [2, 4, 6, 8, 10, 12]]
    seq, lengths = pad_left(histories, max_length=12)  # width 6
    wider = torch.cat([torch.zeros(3, 4, dtype=torch.long), seq], dim=1)  # width 10, 4 more padding columns
    torch.testing.assert_close(enc(seq, lengths), enc(wider, lengths), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.forward_all(seq), enc.forward_all(wider)[:, 4:], atol=1e-5, rtol=1e-5)
    # each row alone (no padding at all) gives the same representation as in the padded batch
    for i, h in enumerate(histories):
        torch.testing.assert_close(enc.encode([h])[0], enc(seq, lengths)[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TRAINABLE)
def test_over_long_history_keeps_the_most_recent_items(name):
    enc = tiny(name)
    long = list(range(1, 26))  # 25 items > max_length
    recent = long[-enc.max_length:]
    torch.testing.assert_close(enc.encode([long]), enc.encode([recent]), atol=1e-6, rtol=1e-6)
    seq, lengths = pad_left([long], max_length=100)  # wider than max_length: forward truncates too
    torch.testing.assert_close(enc(seq, lengths), enc.encode([recent]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [*TRAINABLE, "mostpop"])
def test_empty_history_is_a_clear_error(name):
    enc = tiny(name) if name != "mostpop" else build_encoder("mostpop", N_ITEMS)
    with pytest.raises(ValueError, match="history 1 is empty"):
        enc.encode([[1, 2], []])


def test_out_of_catalog_item_is_a_clear_error():
    with pytest.raises(ValueError, match=r"item ids must be in 1\.\.30"):
        tiny("sasrec").encode([[1, 31]])


def test_unknown_model_and_hparam_are_config_errors():
    with pytest.raises(ConfigError, match="unknown encoder model 'bert4rec'.*sasrec, gru4rec, caser, mostpop"):
        build_encoder("bert4rec", N_ITEMS)
    with pytest.raises(ConfigError, match="unknown hyperparameter.*num_heads"):
        build_encoder("gru4rec", N_ITEMS, num_heads=2)
    with pytest.raises(ConfigError, match="divisible"):
        build_encoder("sasrec", N_ITEMS, hidden_size=10, num_heads=3)
    with pytest.raises(ConfigError, match="dropout"):
        build_encoder("sasrec", N_ITEMS, dropout=1.5)
    assert set(ENCODERS) == {"sasrec", "gru4rec", "caser", "mostpop"}


def test_build_records_resolved_hparams():
    enc = build_encoder("sasrec", N_ITEMS, hidden_size=8)
    assert enc.model_name == "sasrec"
    assert enc.hparams["hidden_size"] == 8 and enc.hparams["max_length"] == 200


def test_mostpop_ranks_by_training_count_then_id():
    pop = MostPop(5).fit([np.array([3, 3, 1]), np.array([3, 1, 2, 5])])  # counts: 3->3, 1->2, 2->1, 5->1, 4->0
    scores = pop.score_all(pop.encode([[4]]))[0]
    order = torch.argsort(scores[1:], descending=True) + 1
    assert order.tolist() == [3, 1, 2, 5, 4]  # 2 and 5 tie on count: the lower id first


def test_full_softmax_loss_matches_cross_entropy_without_padding():
    torch.manual_seed(0)
    out, emb, tgt = torch.randn(6, 4), torch.randn(11, 4), torch.randint(1, 11, (6,))
    logits = out @ emb[1:].T  # items 1..10 only
    expected = torch.nn.functional.cross_entropy(logits, tgt - 1)
    torch.testing.assert_close(full_softmax_loss(out, emb, tgt), expected)


def test_sampled_bce_loss_by_hand():
    out = torch.tensor([[1.0, 0.0]])
    emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    loss = sampled_bce_loss(out, emb, torch.tensor([1]), torch.tensor([[2]]))
    expected = -np.log(1 / (1 + np.exp(-2.0))) - np.log(1 - 1 / (1 + np.exp(1.0)))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    neg = sample_negatives(torch.tensor([1, 2, 3] * 100), 3, 4, torch.Generator().manual_seed(0))
    assert neg.min() >= 1 and neg.max() <= 3


def test_windows_predict_every_training_position_once():
    seqs = [np.arange(1, 12), np.array([5, 6]), np.array([7])]
    windows = sequence_windows(seqs, train_length=4)
    assert all(len(w) <= 5 for w in windows)
    targets = sorted(t for w in windows for t in w[1:].tolist())
    assert targets == sorted(list(range(2, 12)) + [6])
    inputs, tgts = collate_windows(windows)
    assert inputs.shape == tgts.shape == (len(windows), 4)
    # left padding: the most recent input is in the last column, its target the window's last item
    assert inputs[0, -1] == 10 and tgts[0, -1] == 11 and tgts[0, 0] == 8
    assert (tgts[inputs == 0] == 0).all()


def test_length_buckets_cover_every_window_once_per_epoch_and_are_seeded():
    from llmrec.encoders.datamodule import LengthBucketSampler

    lengths = np.random.default_rng(0).integers(2, 50, size=101)
    a, b = LengthBucketSampler(lengths, 8, seed=5, bucket_batches=3), LengthBucketSampler(lengths, 8, seed=5,
                                                                                           bucket_batches=3)
    epoch1, epoch2 = list(a), list(a)
    assert sorted(i for batch in epoch1 for i in batch) == list(range(101)) and len(epoch1) == len(a) == 13
    assert epoch1 != epoch2  # a new order every epoch
    assert list(b) == epoch1  # ... the same one for the same seed


def test_encoder_ranking_ranks_the_llm_subset_with_the_encoders_own_scores():
    """MostPop's table of a seeded test subset: the rows `ranked_subset` draws (as for the LLM), each
    candidate scored count * (n + 1) + (n + 1 - id), chosen = the most counted candidate (ties: lower id)."""
    from llmrec.data.sampling import LAST_COLUMN, ranked_subset
    from llmrec.encoders.ranker import EncoderRanker, evaluate_encoder
    from llmrec.encoders.synthetic import synthetic_dataset
    from llmrec.evaluation.evaluator import rank_split

    data = synthetic_dataset(n_users=40, n_items=40, protocol="llara", eval_positions="all")
    mostpop = MostPop(data.n_items).fit(data.train_sequences())
    counts = np.zeros(data.n_items + 1)
    for seq in data.train_sequences():
        for item in seq:
            counts[item] += 1
    test = data.split("test")
    table = rank_split(EncoderRanker(mostpop, data), data, "test", 7, seed=3).table
    expected = ranked_subset(test, 7, 3)
    assert 7 < len(test) and len(table) == 7
    assert table["user_id"].tolist() == expected["user_id"].tolist()
    assert table["position"].tolist() == expected["position"].tolist()
    assert table[LAST_COLUMN].tolist() == expected[LAST_COLUMN].tolist()
    n = data.n_items + 1
    for (_, row), (_, sample) in zip(table.iterrows(), expected.iterrows()):
        assert row["candidates"] == [int(c) for c in sample["candidates"]]
        assert row["scores"] == [counts[c] * n + (n - c) for c in row["candidates"]]
        assert row["chosen"] == max(row["candidates"], key=lambda c: (counts[c], -c))
    assert table.attrs == {"mode": "score", "split": "test"}
    # the final-position flag is decided on the whole split, not within the subset
    latest = test.groupby("user_id")["position"].max()
    assert table[LAST_COLUMN].tolist() == [p == latest[u] for u, p in zip(table["user_id"], table["position"])]

    # on the whole split a (random) SASRec's table gives the candidate hr@1 its own evaluation computes
    torch.manual_seed(0)
    sasrec = build_encoder("sasrec", data.n_items, **TINY_ENCODERS["sasrec"]).eval()
    whole = rank_split(EncoderRanker(sasrec, data, exclude_seen=False, batch_size=5), data, "test").table
    own = evaluate_encoder(sasrec, data, "test", exclude_seen=False)
    assert np.mean(whole["chosen"] == whole["target"]) == pytest.approx(own["candidates/hr@1"])
    assert len(whole) == own["n_samples"] == len(test)

