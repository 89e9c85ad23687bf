"""The dataset's own item ids (issue 20, defect 9) and errors in the caller's words (defect 8).

Answers carry the id of the user's own log (`raw_id` of items.parquet: `"B00001"` for a custom log whose ids are
text, the integer for ML-100K, ML-1M, Last.fm, Steam) with the model's `index` beside it; requests give those ids
(text is tried as an id before a title; JSON integers work where the ids are integers), from Python, the shell
and HTTP. Every built-in format's ids map both ways. Errors speak the caller's language: the shell's flags
(`--no-verify`, `--no-exclude-history`), HTTP's fields and endpoints, Python's arguments."""

from __future__ import annotations

import json
import shutil

import pytest
from data_fixtures import (
    CUSTOM_COLUMNS,
    write_custom,
    write_grouplens_100k,
    write_lastfm,
    write_ml1m,
    write_recbole_100k,
    write_steam,
    write_text_id_log,
)
from test_serving_support import ServerThread, request

from llmrec.base.errors import CheckpointError
from llmrec.commands.cli import main
from llmrec.data.catalog import Catalog, ItemIds
from llmrec.data.prepare import PrepareConfig, prepare
from llmrec.serving.recommender import Recommender, RequestError
from llmrec.serving.server import create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ the mapping
FORMATS = [("ml-100k", write_grouplens_100k, {}, int), ("ml-100k", write_recbole_100k, {}, int),
           ("ml-1m", write_ml1m, {}, int), ("steam", write_steam, {}, int), ("lastfm", write_lastfm, {}, int),
           ("custom", lambda d: write_custom(d, "csv"), CUSTOM_COLUMNS, int),
           ("custom", write_text_id_log, {"user_column": "user", "item_column": "item", "time_column": "time",
                                          "title_column": "title"}, str)]


@pytest.mark.parametrize("dataset,writer,extra,kind", FORMATS,
                         ids=["ml-100k", "recbole", "ml-1m", "steam", "lastfm", "custom", "custom-text"])
def test_every_built_in_format_answers_with_its_own_ids(tmp_path, dataset, writer, extra, kind):
    writer(tmp_path / "raw")
    data = prepare(PrepareConfig(dataset=dataset, raw=tmp_path / "raw", out=tmp_path / "out", protocol="loo",
                                 download=False, **extra))
    Catalog.from_dataset(data).save(tmp_path)
    ids = ItemIds(Catalog.load(tmp_path).raw_ids())  # through catalog.parquet, as a checkpoint carries it
    assert ids.integer is (kind is int)
    for index, raw in zip(data.items["item_id"].tolist(), data.items["raw_id"].tolist()):
        assert ids.public(index) == kind(raw) and str(ids.public(index)) == raw  # the log's own id, round-tripped
        assert ids.find(ids.public(index)) == ids.find(raw) == index
    if dataset == "steam":  # product ids, not the model's numbering
        assert data.items["raw_id"].iloc[0] == "10001" and ids.public(1) == 10001 and ids.find(1) is None


def test_the_id_rules():
    padded = ItemIds(["", "007", "8"])  # integers, one not written canonically: answers keep the text
    assert (padded.integer, padded.public(1), padded.public(2)) == (False, "007", "8")
    assert padded.find(7) == padded.find("7") == padded.find("007") == 1 and padded.find(" 8 ") == 2
    mixed = ItemIds(["", "5", "B1", "x 2"])  # text ids: an int matches the id written that way
    assert (mixed.integer, mixed.find(5), mixed.find("B1"), mixed.find("x 2"), mixed.find(6)) == (False, 1, 2, 3, None)
    assert mixed.known() == "ids such as '5', 'B1'"
    clash = ItemIds(["", "7", "007"])  # the same value twice: only the text tells them apart
    assert (clash.find("7"), clash.find("007"), clash.find(7)) == (1, 2, 1)
    assert ItemIds(["", "1", "2", "3"]).known() == "ids 1..3" and ItemIds(["", "4", "", "9"]).known() == \
        "ids between 4 and 9"
    assert ItemIds(["", "1", "2"]).find("9" * 5000) is None  # never parses a huge number
    with pytest.raises(CheckpointError, match="gives raw id 'a' to several items"):
        ItemIds(["", "a", "a"])


def test_a_catalog_saved_without_raw_ids_uses_the_item_ids(tmp_path):
    import pandas as pd

    catalog = Catalog(pd.DataFrame({"item_id": [1, 2, 4], "title": ["A", "B", "D"]}), "movies")
    assert catalog.raw_ids() == ["", "1", "2", "", "4"]
    catalog.items = catalog.items.assign(raw_id=["x", "y", "z"])
    catalog.save(tmp_path)
    assert Catalog.load(tmp_path).raw_ids() == ["", "x", "y", "", "z"]


# ------------------------------------------------------------------------------------------------ text ids
@pytest.fixture(scope="module")
def text_rec(text_id_run) -> Recommender:
    return Recommender.from_pretrained(text_id_run / "sft", device="cpu")


def test_python_api_takes_and_returns_the_logs_text_ids(text_rec):
    rec = text_rec
    got = rec.recommend(["B00001", "B00002", "B00004"], k=5)
    assert len(got) == 5 and all(isinstance(i["id"], str) and i["id"].startswith("B") for i in got)
    assert all(i["id"] == rec.ids.raw[i["index"]] and i["title"] == rec.titles[i["index"]] for i in got)
    assert rec.item_id("B00003") == 3 and rec.titles[40] == "B00003"  # an id before a title
    assert rec.item_id("Amélie (2001)") == 7 and rec.item_id(rec.titles[12]) == 12  # titles still work
    ranked = rec.recommend(["B00001"], ["B00010", "Amélie (2001)", "B00012"], k=3)
    assert {i["id"] for i in ranked} == {"B00010", "B00007", "B00012"}
    assert all(isinstance(i, str) and i.startswith("B") for i in rec.retrieve(["B00001"]))
    assert rec.search("amélie")[0] == [{"id": "B00007", "index": 7, "title": "Amélie (2001)"}]
    assert rec.recommend(["B00003"], ["B00003", "B00040"], k=2)[0]["id"] == "B00040"  # B00003 is the history
    for ref, message in [(5, "history[0]: unknown item id 5 (the catalog has ids such as 'B00001', 'B00002')"),
                         ("B99999", "history[0]: no item has the id or title 'B99999' (titles must match exactly)"),
                         (2.5, "history[0]: got float 2.5, expected an item id (text, like 'B00001', 'B00002') or")]:
        with pytest.raises(RequestError) as e:
            rec.recommend([ref])
        assert str(e.value).startswith(message), str(e.value)


def test_predict_takes_and_prints_the_logs_text_ids(text_id_run, text_rec, capsys):
    ckpt = str(text_id_run / "sft")
    assert main(["predict", "--ckpt", ckpt, "--history", "B00001", "--k", "3", "--json", "--device", "cpu"]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert items == text_rec.recommend(["B00001"], k=3) and items[0]["id"].startswith("B")
    assert main(["predict", "--ckpt", ckpt, "--history", "B00001,B00002,B00004", "Amélie (2001)", "--k", "3",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("top 3 next items after a history of 4 (the whole catalog (250 items): 20 retrieved")
    want = text_rec.recommend(["B00001", "B00002", "B00004", "B00007"], k=3)
    assert [line.split()[1] for line in out[2:]] == [i["id"] for i in want]
    assert main(["predict", "--ckpt", ckpt, "--history", "B00003", "--candidates", "B00003,B00040", "--json",
                 "--device", "cpu"]) == 0  # --history B00003 is the id, not the item titled "B00003"
    assert [i["id"] for i in json.loads(capsys.readouterr().out)["items"]] == ["B00040"]


def test_http_takes_and_returns_the_logs_text_ids(text_rec):
    srv = ServerThread(create_app(text_rec, batch_wait_ms=1.0))
    try:
        status, body = request(srv.port, "POST", "/recommend", {"history": ["B00001", "B00002"], "k": 4})
        assert status == 200 and body["items"] == text_rec.recommend(["B00001", "B00002"], k=4)
        assert all(i["id"].startswith("B") and isinstance(i["index"], int) for i in body["items"])
        status, body = request(srv.port, "POST", "/recommend", {"history": ["B00003"],
                                                                 "candidates": ["B00040", "B00003", "B00005"]})
        assert status == 200 and {i["id"] for i in body["items"]} == {"B00040", "B00005"}
        assert request(srv.port, "GET", "/items?query=am%C3%A9lie")[1] == \
            {"items": [{"id": "B00007", "index": 7, "title": "Amélie (2001)"}], "total": 1}
        status, body = request(srv.port, "POST", "/recommend", {"history": [5]})
        assert status == 422 and body["detail"] == \
            "history[0]: unknown item id 5 (the catalog has ids such as 'B00001', 'B00002')"
        spec = request(srv.port, "GET", "/openapi.json")[1]["components"]["schemas"]
        assert {s["type"] for s in spec["Item"]["properties"]["id"]["anyOf"]} == {"integer", "string"}
        assert spec["RecommendRequest"]["examples"] == [{"history": ["B00001", "B00002", "B00003"], "k": 10}]
        assert request(srv.port, "GET", "/health")[1]["item_ids"] == "text"
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ integer ids
def test_integer_ids_that_are_not_the_models_numbers(rec):
    """A log whose ids are integers other than 1..n (Steam's product ids): answers carry them as integers, and
    requests give them as integers (JSON numbers) or as text."""
    steam = Recommender(rec.lm, rec.facts, index=rec.index, raw_ids=[""] + [str(10000 + i) for i in range(1, 25)])
    assert steam.describe()["item_ids"] == "integer"
    got = steam.recommend([10001, "10002", 10003], [10009, 10004, 10017], k=3)
    want = rec.recommend([1, 2, 3], [9, 4, 17], k=3)
    assert [(i["id"], i["index"], i["score"]) for i in got] == [(10000 + i["id"], i["id"], i["score"]) for i in want]
    with pytest.raises(RequestError, match=r"^history\[0\]: unknown item id 1 \(the catalog has ids 10001..10024\)"):
        steam.recommend([1])
    srv = ServerThread(create_app(steam, batch_wait_ms=1.0))
    try:
        status, body = request(srv.port, "POST", "/recommend", {"history": [10001, 10002], "k": 3})
        assert status == 200 and body["items"] == steam.recommend([10001, 10002], k=3)
        assert all(isinstance(i["id"], int) and i["id"] > 10000 for i in body["items"])
        assert request(srv.port, "GET", "/health")[1]["item_ids"] == "integer"
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ defect 8
def predict_error(capsys, *argv: str) -> str:
    assert main(["predict", *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_the_shell_speaks_flags(ckpt, capsys):
    at = ["--ckpt", str(ckpt)]
    assert predict_error(capsys, *at, "--history", "-5") == \
        "llmrec predict: error: option --history: history[0]: unknown item id -5 (the catalog has ids 1..24)"
    assert predict_error(capsys, *at, "--history", "1,-2") == \
        "llmrec predict: error: option --history: history[1]: unknown item id -2 (the catalog has ids 1..24)"
    assert predict_error(capsys, *at, "--history", "1", "--k", "25") == \
        "llmrec predict: error: option --k: got 25, expected an integer in 1..24 (the catalog size)"
    title = predict_error(capsys, *at, "--history", "Red")
    assert title.startswith("llmrec predict: error: option --history: history[0]: no item has the title 'Red' "
                            "(titles must match exactly; titles containing it: 'Red River (1980)' (id 1), ")
    assert title.endswith("; give the item's id, or its title exactly as the checkpoint's catalog.parquet writes it")
    assert "GET /items" not in title and "Recommender" not in title
    excluded = predict_error(capsys, *at, "--history", "1,2", "--candidates", "2,1")
    assert excluded == ("llmrec predict: error: option --candidates: every candidate is in the history (history "
                        "items are excluded), nothing is left to rank; pass --no-exclude-history to allow history "
                        "items")


def test_the_shell_names_no_verify_for_an_unchecked_folder(ckpt, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy, symlinks=True)
    (copy / ".llmrec-output.json").unlink()
    err = predict_error(capsys, "--ckpt", str(copy), "--history", "1,2")
    assert "--no-verify" in err and "Recommender.from_pretrained" not in err, err
    assert main(["predict", "--ckpt", str(copy), "--history", "1,2", "--no-verify", "--device", "cpu"]) == 0


def test_http_and_python_speak_their_own_words(rec, server_rec):
    status, body = request(server_rec.port, "POST", "/recommend", {"history": ["Red"]})
    assert status == 422 and body["detail"].endswith("; search titles with GET /items?query=...")
    status, body = request(server_rec.port, "POST", "/recommend", {"history": [1, 2], "candidates": [2, 1]})
    assert status == 422 and body["detail"].endswith('; send "exclude_history": false to allow history items')
    status, body = request(server_rec.port, "POST", "/recommend/batch",
                           {"requests": [{"history": [1]}, {"history": [1, 2], "candidates": [2, 1]}]})
    assert status == 422 and body["detail"].startswith("requests[1].candidates: every candidate is in the history")
    assert body["detail"].endswith('; send "exclude_history": false to allow history items')
    with pytest.raises(RequestError) as e:
        rec.recommend(["Red"])
    assert str(e.value).endswith("; search titles with Recommender.search(text)") and e.value.field == "history[0]"
    with pytest.raises(RequestError, match=r"^user 1: candidates: every .* pass exclude_history=False to allow"):
        rec.recommend_many([[1], [1, 2]], [None, [2, 1]])


@pytest.fixture(scope="module")
def server_rec(rec):
    srv = ServerThread(create_app(rec, batch_wait_ms=1.0))
    yield srv
    srv.stop()
