"""Serving from Python and the shell (issue 12): `Recommender` answers equal the model's own scoring of the same
prompt, whole-catalog retrieval equals the encoder's top-N, titles and ids are interchangeable, bad requests are
one-line errors naming the field, the bundle manifest names a missing or altered file, the model card, the
`llmrec predict` table and JSON, and the micro-batcher."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import shutil
import time

import pytest
import torch
import yaml
from test_llm_support import full_sequence_scores
from test_serving_support import same_answer

from llmrec.commands.cli import main
from llmrec.data.catalog import Catalog
from llmrec.base.errors import CheckpointError
from llmrec.llm.facts import LLMFacts, SdpoFacts
from llmrec.llm.hybrid import collate_prompts
from llmrec.llm.prompts import choose_template
from llmrec.llm.ranking import score_candidates
from llmrec.llm.recommender import assemble_recommender
from llmrec.serving.batching import BatcherClosed, MicroBatcher
from llmrec.serving.manifest import verify_bundle
from llmrec.llm.model_card import write_model_card
from llmrec.serving.predict import format_table, parse_items
from llmrec.serving.recommender import DEFAULT_RETRIEVE_N, Recommender, RequestError, load_item_index


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # `ckpt` and `rec` come from conftest.py


def hand_ranking(rec: Recommender, window: list[int], candidates: list[int], hybrid: bool = True):
    """The prompt built as training builds it (user 0, position = history length), scored by `score_candidates`
    and, independently, by running every prompt + answer as its own sequence; sorted best first."""
    lm = rec.lm
    prompt = lm.builder.build(window, candidates, 0, len(window))
    assert prompt.template == choose_template(len(lm.builder.templates), rec.facts.seed, 0, len(window))
    batch = collate_prompts([prompt], int(lm.builder.tokenizer.pad_token_id), [candidates[0]], [candidates], [0],
                            [len(window)])
    fast = score_candidates(lm, batch, hybrid)[0].tolist()
    with torch.no_grad():
        slow = full_sequence_scores(lm, batch)[0].tolist() if hybrid else fast
    assert max(abs(a - b) for a, b in zip(fast, slow)) < 1e-4
    order = sorted(range(len(candidates)), key=lambda j: -fast[j])
    return [(candidates[j], fast[j]) for j in order]


# ------------------------------------------------------------------------------------------------ Python API
def test_recommend_with_candidates_equals_the_models_scoring_of_the_same_prompt(rec):
    history, candidates = [1, 2, 3], [9, 4, 17, 12, 22]
    want = hand_ranking(rec, history, candidates)
    got = rec.recommend(history, candidates, k=5)
    assert [i["id"] for i in got] == [c for c, _ in want]
    assert [i["rank"] for i in got] == [1, 2, 3, 4, 5]
    assert all(abs(i["score"] - s) < 1e-5 for i, (_, s) in zip(got, want))
    assert [i["title"] for i in got] == [rec.titles[c] for c, _ in want]
    assert rec.recommend(history, candidates, k=2) == got[:2]
    assert len(rec.recommend(history, candidates, k=20)) == 5  # at most the candidates


def test_titles_and_ids_are_interchangeable(rec):
    by_id = rec.recommend([1, 2, 3], [9, 4, 17], k=3)
    titles = rec.titles
    assert rec.recommend([titles[1], 2, titles[3]], [titles[9], 4, "  " + titles[17].replace(" ", "   ")], k=3) == by_id
    assert rec.item_id(titles[5]) == 5 and rec.item_id(5) == 5


def test_retrieve_then_rerank_over_the_whole_catalog(ckpt):
    rec = Recommender.from_pretrained(ckpt, device="cpu", retrieve_n=8)
    history = [5, 6, 7, 8]
    seq = rec.lm.encoder.encode([history])  # the encoder's own full ranking, by hand
    scores = (seq @ rec.lm.encoder.item_embeddings().T)[0]
    scores[0] = float("-inf")
    scores[history] = float("-inf")
    top8 = set(scores.topk(8).indices.tolist())
    retrieved = rec.retrieve(history)
    assert len(retrieved) == 8 and set(retrieved) == top8
    got = rec.recommend(history, k=5)
    assert len(got) == 5 and not {i["id"] for i in got} & set(history) and {i["id"] for i in got} <= top8
    # re-ranking = the LLM ranking those 8 in the order the prompt lists them
    assert got == rec.recommend(history, retrieved, k=5)
    assert [i["id"] for i in got] == [c for c, _ in hand_ranking(rec, history, retrieved)][:5]
    # k above N retrieves k; exclude_history=False may return history items
    assert len(rec.recommend(history, k=12)) == 12
    assert set(rec.retrieve(history, n=24, exclude_history=False)) == set(range(1, 25))


def test_retrieval_depth_and_history_window_come_from_the_facts_else_defaults(rec):
    unrecorded = dataclasses.replace(rec.facts, n_candidates=None, max_history=None)
    plain = Recommender(rec.lm, unrecorded, index=rec.index)
    assert plain.retrieve_n == DEFAULT_RETRIEVE_N == 20 and plain.history_window == 10  # llara's history length
    history = [1, 2, 3, 4]
    assert len(plain.retrieve(history)) == 20 and not set(plain.retrieve(history)) & set(history)
    assert len(plain.retrieve(list(range(1, 10)))) == 24 - 9  # fewer items left than N
    recorded = Recommender(rec.lm, dataclasses.replace(unrecorded, n_candidates=7, max_history=3), index=rec.index)
    assert recorded.retrieve_n == 7 and len(recorded.retrieve(history)) == 7
    assert recorded.recommend(history, [9, 10]) == recorded.recommend(history[-3:], [9, 10])
    assert recorded.recommend(history, [9, 10]) != plain.recommend(history, [9, 10])  # 3 items seen, not 4
    assert Recommender(rec.lm, unrecorded, index=rec.index, retrieve_n=5).retrieve_n == 5


def test_retrieval_without_faiss_scores_every_item_with_torch(rec):
    exact = Recommender(rec.lm, rec.facts, index=None)
    for history in ([1, 2, 3], [20, 4], list(range(3, 15))):
        assert set(exact.retrieve(history)) == set(rec.retrieve(history))
        assert exact.retrieve(history) == rec.retrieve(history)  # same set -> same seeded prompt order
        assert exact.recommend(history, k=4) == rec.recommend(history, k=4)


def test_a_long_history_keeps_its_most_recent_items_and_excludes_them_all(rec):
    window = rec.history_window
    history = [24, 23, 22, 21, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert window < len(history)
    candidates = [11, 12, 13, 14]
    assert rec.recommend(history, candidates, k=4) == rec.recommend(history[-window:], candidates, k=4)
    got = rec.recommend(history, k=9)  # 24 - 15 items are left
    assert len(got) == 9 and not {i["id"] for i in got} & set(history)
    assert rec.recommend(history, [24, 11, 12], k=3) == rec.recommend(history, [11, 12], k=3)  # 24 was seen


def test_recommend_many_answers_each_user_as_alone(rec):
    histories = [[1, 2, 3], [4, 5], [10, 11, 12, 13], ["Red River (1980)", 7]]
    candidates = [None, [1, 2, 3, 9], None, [3, 8, 19]]
    many = rec.recommend_many(histories, candidates, k=3)
    assert len(many) == 4
    for h, c, got in zip(histories, candidates, many):
        assert same_answer(got, rec.recommend(h, c, k=3))


def test_bad_requests_are_one_line_errors_naming_the_field(rec):
    cases = [
        (([1, 99],), "history[1]: unknown item id 99 (the catalog has ids 1..24)"),
        ((["No Such Film (1900)"],), "history[0]: no item has the title 'No Such Film (1900)'"),
        (([],), "history is empty"),
        (("1,2",), "history: expected a list of item ids or titles, got str"),
        (([1, 2.5],), "history[1]: got float 2.5, expected an item id (integer) or an exact title"),
        (([True],), "history[0]: got True, expected an item id"),
        (([1], [2, 3, 2]), "candidates[2]: item 2 is already candidates[0]"),
        (([1, 2], [2, 1]), "candidates: every candidate is in the history"),
        (([1], []), "candidates is empty"),
        (([1], None, 0), "k: got 0, expected an integer in 1..24 (the catalog size)"),
        (([1], None, 25), "k: got 25, expected an integer in 1..24"),
    ]
    for args, message in cases:
        with pytest.raises(RequestError) as e:
            rec.recommend(*args)
        assert message in str(e.value) and "\n" not in str(e.value), (args, str(e.value))
    with pytest.raises(RequestError, match=r"^user 1: history\[0\]: unknown item id 0"):
        rec.recommend_many([[1], [0]])


def test_an_ambiguous_title_is_refused_naming_the_items(rec):
    lm = copy.copy(rec.lm)
    lm.builder = copy.copy(rec.builder)
    lm.builder.titles = list(rec.builder.titles)
    lm.builder.titles[2] = lm.builder.titles[1]  # two items share a title
    twice = Recommender(lm, rec.facts)
    with pytest.raises(RequestError, match=r"history\[0\]: the title 'Red River \(1980\)' matches items 1, 2; give "
                                           r"the item id instead"):
        twice.recommend(["Red River (1980)"])
    assert twice.item_id(1) == 1


def test_a_text_only_model_ranks_given_candidates_but_cannot_retrieve(rec, ckpt):
    lm = assemble_recommender(rec.lm.model, rec.builder.tokenizer, Catalog.load(ckpt), "text", None,
                              rec.builder.max_length, rec.seed)
    text = Recommender(lm.eval(), dataclasses.replace(rec.facts, prompt="text"))
    assert not text.can_retrieve
    with pytest.raises(RequestError, match="text-only prompts .* cannot retrieve .* pass the candidates"):
        text.recommend([1, 2, 3])
    got = text.recommend([1, 2, 3], [9, 4, 17], k=3)
    assert [(i["id"], round(i["score"], 4)) for i in got] == \
        [(c, round(s, 4)) for c, s in hand_ranking(text, [1, 2, 3], [9, 4, 17], hybrid=False)]


def test_title_search(rec):
    found, total = rec.search("red", limit=2)
    expected = [i for i in range(1, 25) if "red" in rec.titles[i].lower()]
    assert total == len(expected) == 4 and [f["id"] for f in found] == expected[:2]
    with pytest.raises(RequestError, match="query is empty"):
        rec.search("   ")


def test_a_bundled_faiss_index_is_used_and_checked(rec, tmp_path):
    from llmrec.encoders.index import ItemIndex

    table = rec.lm.item_table.cpu()
    (tmp_path / "encoder").mkdir()
    ItemIndex.build(table).save(tmp_path / "encoder" / "items.faiss")
    loaded = load_item_index(tmp_path, table, None)
    assert loaded.n_items == 24 and loaded.dim == table.shape[1]
    query = torch.randn(1, table.shape[1])
    assert loaded.retrieve(query, 5)[1].tolist() == [(table[1:] @ query[0]).topk(5).indices.add(1).tolist()]
    assert load_item_index(tmp_path, table, {"files": {}}).index is not loaded.index  # unlisted file: rebuilt
    ItemIndex.build(table[:10]).save(tmp_path / "encoder" / "items.faiss")
    with pytest.raises(CheckpointError, match=r"items.faiss indexes 9 items of dimension 16, the bundled encoder "
                                              r"has 24"):
        load_item_index(tmp_path, table, None)


# ------------------------------------------------------------------------------------------------ manifest
@pytest.fixture()
def copied(ckpt, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(ckpt, out, symlinks=True)
    return out


def one_line_error(folder):
    with pytest.raises(CheckpointError) as e:
        Recommender.from_pretrained(folder, device="cpu")
    assert "\n" not in str(e.value)
    return str(e.value)


def test_the_manifest_names_an_altered_or_missing_file(copied, capsys):
    assert verify_bundle(copied)["command"] == "train-llm"
    (copied / "notes.txt").write_text("a file the user added is not part of the bundle\n")
    (copied / "eval-test-score" / "metrics.json").write_text("{}\n")  # a nested output: not part of it either
    verify_bundle(copied)

    weights = copied / "projector.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(data))
    message = one_line_error(copied)
    assert message == (f"{weights} was altered after it was written (its sha256 differs from the manifest's); "
                       f"copy the checkpoint folder again")
    assert main(["predict", "--ckpt", str(copied), "--history", "1,2", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == f"llmrec predict: error: {message}"
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    verify_bundle(copied)

    with open(copied / "config.yaml", "a") as f:
        f.write("# edited\n")
    assert "config.yaml was altered after it was written (" in one_line_error(copied)
    (copied / "config.yaml").unlink()
    assert one_line_error(copied) == (f"{copied / 'config.yaml'} is missing (the bundle manifest .llmrec-output.json "
                                      f"lists it); the checkpoint folder is incomplete: copy it again")


def test_a_folder_without_manifest_or_of_another_command_is_refused(copied):
    marker = copied / ".llmrec-output.json"
    facts = json.loads(marker.read_text())
    marker.write_text(json.dumps({**facts, "command": "evaluate"}))
    assert "is a `llmrec evaluate` output, not an LLM checkpoint" in one_line_error(copied)
    marker.unlink()
    assert "has no valid bundle manifest (.llmrec-output.json)" in one_line_error(copied)
    assert Recommender.from_pretrained(copied, device="cpu", verify=False).n_items == 24


def test_loading_reads_each_marker_file_once_and_the_facts_round_trip(ckpt, monkeypatch):
    from llmrec.base import markers

    reads: list[str] = []
    real = markers._load_text
    monkeypatch.setattr(markers, "_load_text", lambda path: reads.append(path.relative_to(ckpt).as_posix())
                        or real(path))
    rec = Recommender.from_pretrained(ckpt, device="cpu")
    assert sorted(reads) == [".llmrec-output.json", "checkpoint.json", "encoder/config.yaml"]  # each once
    written = json.loads((ckpt / "checkpoint.json").read_text())
    assert json.dumps(rec.facts.to_dict(), indent=2) == json.dumps(written, indent=2)  # same keys, values, order
    assert rec.facts.stage == "sft" and "stage" not in written


def test_every_file_of_the_checkpoint_follows_the_umask(ckpt):
    """safetensors writes 0600 files; the output folder gives every file the umask's mode (0644 under 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.relative_to(ckpt).as_posix(): p.stat().st_mode & 0o777 for p in ckpt.rglob("*")
             if p.is_file() and not p.is_symlink()}
    assert {"projector.safetensors", "model/model.safetensors", "encoder/encoder.safetensors"} <= set(modes)
    assert {rel: oct(m) for rel, m in modes.items() if m != 0o666 & ~mask} == {}


# ------------------------------------------------------------------------------------------------ model card
def test_the_model_card_describes_the_bundle(ckpt, copied):
    facts = LLMFacts.from_dict(json.loads((ckpt / "checkpoint.json").read_text()))
    config = yaml.safe_load((ckpt / "config.yaml").read_text())
    metrics = json.loads((ckpt / "metrics.json").read_text())
    text = write_model_card(copied, facts, config, metrics).read_text()
    assert text.startswith("# LLM recommender `copy`\n\nA next-item recommender fine-tuned by `llmrec train-llm`")
    assert "- dataset: `tiny` (movies domain, 24 items)" in text
    assert "- protocol: `llara` (split seed 0, evaluation positions `all`)" in text
    assert "2 layers, hidden size 32, 2 heads, word tokenizer" in text
    assert "- fine-tuning: all weights" in text
    assert "gru4rec with hidden size 16 and histories of up to 10 items" in text
    assert f"| `test/hr@1` | {metrics['test/hr@1']:.4f} |" in text
    assert f"| `best_step` | {metrics['best_step']} |" in text
    assert "valid/history" not in text  # curves stay in metrics.json
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == config
    sdpo = dataclasses.replace(facts, stage="sdpo",
                               sdpo=SdpoFacts(sft="/x/sft-run", loss="sdpo", negatives=3, beta=1.0))
    assert "preference-trained by `llmrec train-sdpo` (sdpo, 3 negative(s) per prompt, beta 1.0) from the SFT " \
           "checkpoint `sft-run`" in write_model_card(copied, sdpo, config, metrics).read_text()


# ------------------------------------------------------------------------------------------------ CLI
def test_parse_items_and_the_table():
    assert parse_items(["50,172, 133", "Usual Suspects, The (1995)", "7"]) == [50, 172, 133,
                                                                              "Usual Suspects, The (1995)", 7]
    table = format_table([{"rank": 1, "id": 50, "title": "Star Wars (1977)", "score": -3.14159},
                          {"rank": 2, "id": 7, "title": "Heat (1995)", "score": -10.0}])
    assert table == ("rank      id  title                  score\n"
                     "   1      50  Star Wars (1977)     -3.1416\n"
                     "   2       7  Heat (1995)         -10.0000")


def test_predict_prints_a_table_or_json(ckpt, rec, capsys):
    want = rec.recommend([1, "Blue Fire (1981)", 3], k=4)
    assert main(["predict", "--ckpt", str(ckpt), "--history", "1", "Blue Fire (1981)", "3", "--k", "4",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"top 4 next items after a history of 3 (the whole catalog (24 items): {rec.retrieve_n} "
                      f"retrieved by the encoder, re-ranked by the LLM):")
    assert out[1].split() == ["rank", "id", "title", "score"]
    rows = [line.split() for line in out[2:]]
    assert [(int(r[0]), int(r[1]), " ".join(r[2:-1])) for r in rows] == [(i["rank"], i["id"], i["title"]) for i in want]
    assert all(abs(float(r[-1]) - i["score"]) < 1e-3 for r, i in zip(rows, want))

    assert main(["predict", "--ckpt", str(ckpt), "--history", "1,2,3", "--candidates", "9,4", "17", "--k", "2",
                 "--json", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["retrieved"] is False and same_answer(got["items"], rec.recommend([1, 2, 3], [9, 4, 17], k=2))

    assert main(["predict", "--ckpt", str(ckpt), "--history", "1,999", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "llmrec predict: error: option --history: history[1]: unknown item id 999 (the catalog has ids 1..24)")


# ------------------------------------------------------------------------------------------------ batcher
def test_the_micro_batcher_groups_requests_and_answers_each_its_own():
    calls = []

    def run(queries):
        calls.append(list(queries))
        return [ValueError(f"bad {q}") if q == 7 else q * 10 for q in queries]

    async def scenario():
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=30)
        await batcher.start()
        out = await asyncio.gather(*(batcher.submit(q) for q in range(1, 11)), return_exceptions=True)
        await batcher.stop()
        return out

    out = asyncio.run(scenario())
    assert out[:6] == [10, 20, 30, 40, 50, 60] and out[7:] == [80, 90, 100]
    assert isinstance(out[6], ValueError) and str(out[6]) == "bad 7"  # only the bad one fails
    assert [len(c) for c in calls] == [4, 4, 2] and sorted(q for c in calls for q in c) == list(range(1, 11))


def test_the_micro_batcher_survives_a_failing_batch_and_drains_on_stop():
    def run(queries):
        if 0 in queries:
            raise RuntimeError("model crashed")
        return list(queries)

    async def scenario():
        batcher = MicroBatcher(run, max_batch=3, max_wait_ms=2000)
        await batcher.start()
        crashed = await asyncio.gather(*(batcher.submit(q) for q in (0, 5, 6)), return_exceptions=True)  # full
        pending = [asyncio.ensure_future(batcher.submit(q)) for q in (1, 2)]
        await asyncio.sleep(0.05)  # in the 2 s wait window
        started = time.monotonic()
        await batcher.stop()  # answers the two at once, without waiting out the window
        stopped_in = time.monotonic() - started
        with pytest.raises(BatcherClosed):
            await batcher.submit(4)
        return crashed, [p.result() for p in pending], stopped_in, batcher.batches

    crashed, answered, stopped_in, batches = asyncio.run(scenario())
    assert all(isinstance(c, RuntimeError) and str(c) == "model crashed" for c in crashed)  # its batch only
    assert answered == [1, 2] and batches == 2
    assert stopped_in < 1.0
