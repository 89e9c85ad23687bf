"""Encoder checkpoints (safetensors + config.yaml) and the faiss item index."""

import numpy as np
import pytest
import torch

from llmrec.encoders import (
    build_encoder,
    is_encoder_checkpoint,
    load_encoder,
    save_encoder,
)
from llmrec.encoders.index import ItemIndex
from llmrec.encoders.synthetic import synthetic_dataset
from llmrec.base.errors import CheckpointError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = synthetic_dataset(n_users=20, n_items=40)
    d.save(tmp_path_factory.mktemp("data") / "syn")
    return d


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser", "mostpop"])
def test_save_then_load_gives_identical_scores(tmp_path, data, name):
    torch.manual_seed(1)
    hp = {} if name == "mostpop" else {"hidden_size": 8, "max_length": 6 if name != "caser" else 3}
    enc = build_encoder(name, data.n_items, **hp)
    if name == "mostpop":
        enc.fit(data.train_sequences())
    enc.eval()
    save_encoder(enc, tmp_path / "ckpt", data=data)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"encoder.safetensors", "config.yaml", "items.faiss"}
    assert is_encoder_checkpoint(tmp_path / "ckpt")
    loaded = load_encoder(tmp_path / "ckpt", data)
    assert not loaded.training and type(loaded) is type(enc) and loaded.hparams == enc.hparams
    histories = [[1, 2, 3], [5], [7, 8, 9, 10, 11, 12, 13, 14]]
    torch.testing.assert_close(loaded.score_all(loaded.encode(histories)), enc.score_all(enc.encode(histories)),
                               rtol=0, atol=0)
    torch.testing.assert_close(loaded.item_embeddings(), enc.item_embeddings(), rtol=0, atol=0)


def test_checkpoint_for_other_data_is_refused(tmp_path, data):
    enc = build_encoder("sasrec", data.n_items, hidden_size=8, max_length=5)
    save_encoder(enc, tmp_path / "ckpt", data=data)
    bigger = synthetic_dataset(n_users=20, n_items=50)
    with pytest.raises(CheckpointError, match="trained on 40 items but the data .* have 50"):
        load_encoder(tmp_path / "ckpt", bigger)
    renamed = synthetic_dataset(n_users=20, n_items=40)
    renamed.items.loc[0, "title"] = "Another title"
    with pytest.raises(CheckpointError, match="catalog fingerprint mismatch"):
        load_encoder(tmp_path / "ckpt", renamed)


def test_folder_that_is_not_an_encoder_checkpoint(tmp_path, data):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "missing")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"stuff/config.yaml: missing, so .*stuff is not an encoder checkpoint; "
                                              r"expected an encoder checkpoint written by `llmrec train-encoder`$"):
        load_encoder(tmp_path / "stuff")
    (tmp_path / "stuff" / "config.yaml").write_text("lr: 0.1\n")
    with pytest.raises(CheckpointError, match=r"stuff/config.yaml: no `encoder:` section, so .*stuff is not an encoder "
                                              r"checkpoint; expected an encoder checkpoint written by"):
        load_encoder(tmp_path / "stuff")
    # save_encoder never replaces a folder it did not write
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_encoder(build_encoder("mostpop", 40), tmp_path / "stuff")
    assert (tmp_path / "stuff" / "notes.txt").read_text() == "hello"


def test_weights_that_do_not_match_the_config_are_refused(tmp_path, data):
    save_encoder(build_encoder("sasrec", 40, hidden_size=8, max_length=5), tmp_path / "a", data=data)
    save_encoder(build_encoder("sasrec", 40, hidden_size=16, max_length=5), tmp_path / "b", data=data)
    (tmp_path / "b" / "encoder.safetensors").replace(tmp_path / "a" / "encoder.safetensors")
    with pytest.raises(CheckpointError, match="does not match the sasrec"):
        load_encoder(tmp_path / "a", data)


def test_faiss_index_returns_the_brute_force_top_k(tmp_path):
    torch.manual_seed(0)
    emb = torch.randn(101, 16)
    queries = torch.randn(7, 16)
    index = ItemIndex.build(emb)
    scores, ids = index.retrieve(queries, k=10)
    brute = queries @ emb.T
    brute[:, 0] = float("-inf")  # padding is never a result
    top = torch.topk(brute, 10, dim=1)
    assert (ids == top.indices.numpy()).all()
    np.testing.assert_allclose(scores, top.values.numpy(), rtol=1e-5, atol=1e-5)
    assert (ids > 0).all()
    # saved and reloaded (atomically written file) -> same answers
    index.save(tmp_path / "items.faiss")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    again = ItemIndex.load(tmp_path)
    assert (again.retrieve(queries, k=10)[1] == ids).all()


def test_faiss_index_excludes_items_and_caps_k():
    torch.manual_seed(0)
    emb = torch.randn(6, 4)
    index = ItemIndex.build(emb)
    q = torch.randn(2, 4)
    _, all_ids = index.retrieve(q, k=100)
    assert all_ids.shape == (2, 5) and sorted(all_ids[0].tolist()) == [1, 2, 3, 4, 5]
    _, ids = index.retrieve(q, k=3, exclude=[[int(all_ids[0, 0])], []])
    assert int(all_ids[0, 0]) not in ids[0].tolist()
    assert ids[0].tolist() == all_ids[0, 1:4].tolist() and ids[1].tolist() == all_ids[1, :3].tolist()
    _, ids = index.retrieve(q, k=5, exclude=[[1, 2, 3, 4], []])
    assert ids[0].tolist() == [5, 0, 0, 0, 0]  # fewer eligible items than k: filled with padding id 0


def test_index_matches_encoder_scores(tmp_path, data):
    enc = build_encoder("sasrec", data.n_items, hidden_size=8, max_length=5).eval()
    save_encoder(enc, tmp_path / "ckpt", data=data)
    index = ItemIndex.load(tmp_path / "ckpt")
    h = enc.encode([[1, 2, 3], [4, 5]])
    _, ids = index.retrieve(h, k=5)
    scores = enc.score_all(h)
    scores[:, 0] = float("-inf")
    assert (ids == torch.topk(scores, 5).indices.numpy()).all()
