"""Batch prediction for every user (`llmrec predict --all-users`, `llmrec.serving.all_users.recommend_all_users`):
which users and histories each split answers, answers equal to `recommend` for the same history, the table's
columns, the same file from one and from two real processes, a run killed after its first part resumed to the
uninterrupted run's table without recomputing the kept part, and one-line refusals of options that do not fit.
Multi-process and killed runs are real subprocesses, bounded by timeouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.commands.cli import main
from llmrec.data.dataset import ProcessedDataset
from llmrec.serving.all_users import COLUMNS, read_all_users, recommend_all_users, user_histories

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
SCORE_TOLERANCE = 1e-5  # absolute; the same prompts in batches of other sizes (padding) or another thread count


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmrec", *args]


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("OMP_NUM_THREADS", None)  # the command sets each process's threads itself
    return env


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame, skip_rows: slice | None = None) -> None:
    """Same rows in the same order; scores equal to `SCORE_TOLERANCE` (null where the LLM did not rank)."""
    if skip_rows is not None:
        keep = np.ones(len(a), dtype=bool)
        keep[skip_rows] = False
        a, b = a[keep].reset_index(drop=True), b[keep].reset_index(drop=True)
    exact = [c for c in COLUMNS if c != "score"]
    pd.testing.assert_frame_equal(a[exact], b[exact])
    assert (a["score"].isna() == b["score"].isna()).all()
    assert np.allclose(a["score"].fillna(0), b["score"].fillna(0), atol=SCORE_TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def data(sft_run) -> ProcessedDataset:
    return ProcessedDataset.load(sft_run / "data")


def test_which_users_and_which_history_each_split_answers(data):
    sequences = data.user_sequences()
    everyone = user_histories(data, "all")
    assert everyone["user_index"].tolist() == sorted(sequences)
    assert [list(h) for h in everyone["history"]] == [list(sequences[u]) for u in sorted(sequences)]
    tested = user_histories(data, "test")
    test = data.split("test")
    assert tested["user_index"].tolist() == sorted(test["user_id"].unique())
    for user, history in zip(tested["user_index"], tested["history"]):  # before the user's last test sample
        last = int(test.loc[test["user_id"] == user, "position"].max())
        assert list(history) == list(sequences[user][:last]) and len(history) == last
    raw = dict(zip(data.users["user_id"], data.users["raw_id"]))
    assert [str(u) for u in tested["user"]] == [raw[u] for u in tested["user_index"]]


def test_each_user_is_answered_as_recommend_answers_the_history(rec, data):
    table = recommend_all_users(rec, data, split="test", k=5, part_size=2)
    assert list(table.columns) == list(COLUMNS)
    users = user_histories(data, "test")
    assert table["user_index"].unique().tolist() == users["user_index"].tolist()  # user order, then rank
    for user, history in zip(users["user_index"], users["history"]):
        rows = table[table["user_index"] == user].reset_index(drop=True)
        alone = rec.recommend([rec.ids.public(i) for i in history], k=5)
        assert rows["rank"].tolist() == [1, 2, 3, 4, 5] == [a["rank"] for a in alone]
        assert rows["id"].tolist() == [a["id"] for a in alone]
        assert rows["index"].tolist() == [a["index"] for a in alone]
        assert rows["title"].tolist() == [a["title"] for a in alone]
        assert rows["ranked_by"].tolist() == [a["ranked_by"] for a in alone]
        assert np.allclose(rows["score"], [a["score"] for a in alone], atol=SCORE_TOLERANCE, rtol=0)
        assert not set(rows["index"]) & set(history)  # history excluded
        assert (rows["history_length"] == len(history)).all()


def test_the_python_api_writes_the_same_table_as_the_command(rec, data, sft_run, tmp_path, capsys):
    via_api = recommend_all_users(rec, sft_run / "data", split="all", k=3, out=tmp_path / "api.parquet")
    assert via_api.attrs["llmrec"]["format"] == "llmrec-all-users"
    assert via_api.attrs["llmrec"]["users"] == len(data.users) == via_api["user"].nunique()
    assert main(["predict", "--ckpt", str(sft_run / "sft"), "--all-users", "--split", "all", "--k", "3", "--out",
                 str(tmp_path / "cli.parquet"), "--device", "cpu", "--part-size", "5"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'cli.parquet'}"
    assert_same_table(via_api, read_all_users(tmp_path / "cli.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.parquet", "cli.parquet"]  # parts folders removed


def test_two_processes_write_the_one_process_table(sft_run, tmp_path):
    common = ["predict", "--ckpt", str(sft_run / "sft"), "--all-users", "--split", "all", "--part-size", "4",
              "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "one.parquet")]) == 0
    done = subprocess.run(cli(*common, "--out", str(tmp_path / "two.parquet"), "--devices", "2"), check=False,
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(rank 0/2)" in done.stderr and "(rank 1/2)" in done.stderr  # 18 users in 5 parts: both ranks worked
    assert done.stdout.strip() == f"wrote {tmp_path / 'two.parquet'}"  # rank 0 alone wrote and printed
    one, two = read_all_users(tmp_path / "one.parquet"), read_all_users(tmp_path / "two.parquet")
    assert one.attrs["llmrec"] == two.attrs["llmrec"]
    assert_same_table(one, two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.parquet", "two.parquet"]


def test_a_process_left_without_a_part_takes_part_and_does_nothing(sft_run, tmp_path):
    """Fewer parts than processes (18 users in one part of 64): the idle rank must still join the run; Lightning
    refuses an empty loader on any rank, which crashed the run before."""
    common = ["predict", "--ckpt", str(sft_run / "sft"), "--all-users", "--split", "all", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "one.parquet"), "--part-size", "4"]) == 0
    done = subprocess.run(cli(*common, "--out", str(tmp_path / "two.parquet"), "--devices", "2", "--part-size", "64"),
                          check=False, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(rank 1/2): 0 users" in done.stderr
    assert_same_table(read_all_users(tmp_path / "one.parquet"), read_all_users(tmp_path / "two.parquet"))


@pytest.fixture(scope="module")
def many_users(sft_run, tmp_path_factory) -> Path:
    """`sft_run`'s dataset with every user copied 20 times (360 users, the same catalog): a run long enough to
    be killed between its parts."""
    data = ProcessedDataset.load(sft_run / "data")
    n = int(data.users["user_id"].max())
    users = pd.concat([data.users.assign(user_id=data.users["user_id"] + r * n) for r in range(20)],
                      ignore_index=True)
    users["raw_id"] = users["user_id"].astype(str)
    interactions = pd.concat([data.interactions.assign(user_id=data.interactions["user_id"] + r * n)
                              for r in range(20)], ignore_index=True).sort_values(["user_id", "timestamp"],
                                                                                  kind="stable")
    meta = {**data.meta, "n_users": len(users), "n_interactions": len(interactions)}
    bigger = ProcessedDataset(meta=meta, items=data.items, interactions=interactions.reset_index(drop=True),
                              users=users, samples=data.samples)
    return bigger.save(tmp_path_factory.mktemp("many-users") / "data")


def test_a_killed_run_resumes_from_its_finished_parts(sft_run, many_users, tmp_path, capsys):
    common = ["predict", "--ckpt", str(sft_run / "sft"), "--all-users", "--data", str(many_users), "--split", "all",
              "--k", "4", "--part-size", "8", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "whole.parquet")]) == 0
    whole = read_all_users(tmp_path / "whole.parquet")
    out = tmp_path / "killed.parquet"
    parts = tmp_path / "killed.parquet.parts"
    child = subprocess.Popen(cli(*common, "--out", str(out), "--threads", "1"), cwd=ROOT, env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (parts / "part-00000.parquet").exists():
            assert child.poll() is None and time.monotonic() < deadline, "the run ended before its first part"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    finished = sorted(p.name for p in parts.glob("part-*.parquet"))
    assert not out.exists() and 1 <= len(finished) < 45, finished  # killed between its 45 parts
    # mark the kept part: if the resumed run recomputed it, the mark would be gone
    first = pd.read_parquet(parts / "part-00000.parquet")
    first.loc[0, "title"] = "kept from the killed run"
    first.to_parquet(parts / "part-00000.parquet", index=False)
    capsys.readouterr()
    # other options than the killed run's: refused in one line, the parts untouched
    assert main([*common[:8], "--k", "5", *common[10:], "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds the parts of a run with other options (k differ)" in err, err
    assert sorted(p.name for p in parts.glob("part-*.parquet")) == finished
    # the same options: resumed, the kept part reused, the table otherwise the uninterrupted run's
    assert main([*common, "--out", str(out)]) == 0
    resumed = read_all_users(out)
    assert resumed.loc[0, "title"] == "kept from the killed run"
    assert_same_table(whole, resumed, skip_rows=slice(0, 1))
    assert resumed.attrs["llmrec"] == whole.attrs["llmrec"]
    assert not parts.exists()


ONE_HISTORY = "applies to one history, not to --all-users (which answers every user of --data)"


@pytest.mark.parametrize("args, message", [
    (["--all-users", "--history", "1,2"], f"option --history: {ONE_HISTORY}"),
    (["--all-users", "--json"], f"option --json: {ONE_HISTORY}"),
    (["--all-users"], "predict --all-users needs --ckpt DIR and --out FILE.parquet"),
    (["--history", "1,2", "--out", "x.parquet"], "option --out: applies to --all-users only"),
    (["--history", "1,2", "--split", "test"], "option --split: applies to --all-users only"),
    (["--history", "1,2", "--devices", "2"], "option --devices: applies to --all-users only"),
])
def test_options_that_do_not_fit_are_refused_in_one_line(ckpt, args, message, capsys):
    assert main(["predict", "--ckpt", str(ckpt), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"llmrec predict: error: {message}"


def test_an_unknown_split_and_a_foreign_out_file_are_refused(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict", "--ckpt", str(ckpt), "--all-users", "--split", "valid", "--out", str(tmp_path / "r.parquet")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --split: invalid choice: 'valid'" in err
    theirs = tmp_path / "theirs.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(theirs)
    assert main(["predict", "--ckpt", str(ckpt), "--all-users", "--out", str(theirs), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == (f"llmrec predict: error: option --out: {theirs} exists and was not "
                                               f"written by `llmrec predict --all-users`; move it away or pass "
                                               f"another path")
    assert pd.read_parquet(theirs)["a"].tolist() == [1]
    assert not (tmp_path / "theirs.parquet.parts").exists()


def test_the_run_file_records_what_decides_the_output(sft_run, tmp_path):
    from llmrec.serving.all_users import RUN_FILE, parts_folder

    out = tmp_path / "r.parquet"
    parts_folder(out).mkdir()
    (parts_folder(out) / "notes.txt").write_text("mine")
    assert main(["predict", "--ckpt", str(sft_run / "sft"), "--all-users", "--out", str(out), "--device",
                 "cpu"]) == 2  # a parts folder holding a file that is not ours
    (parts_folder(out) / "notes.txt").unlink()
    assert main(["predict", "--ckpt", str(sft_run / "sft"), "--all-users", "--out", str(out), "--device",
                 "cpu", "--part-size", "100"]) == 0
    assert not (parts_folder(out) / RUN_FILE).exists()
    facts = read_all_users(out).attrs["llmrec"]
    assert facts["split"] == "test" and facts["k"] == 10 and json.dumps(facts)


def test_a_user_the_model_cannot_answer_gets_no_rows_and_the_others_do(rec, caplog):
    from llmrec.serving.all_users import recommend_users

    users = pd.DataFrame({"user": ["a", "b"], "user_index": [1, 2], "history": [[], [1, 2, 3]]})
    with caplog.at_level("WARNING"):
        table = recommend_users(rec, users, k=3)
    assert table["user"].tolist() == ["b"] * 3 and table["rank"].tolist() == [1, 2, 3]
    assert "1 users have no answer (no rows), e.g. user a: history is empty" in caplog.text


def test_a_k_larger_than_the_catalog_is_refused_before_any_user(ckpt, tmp_path, capsys):
    out = tmp_path / "r.parquet"
    assert main(["predict", "--ckpt", str(ckpt), "--all-users", "--out", str(out), "--k", "999", "--device",
                 "cpu"]) == 2
    assert capsys.readouterr().err.strip() == ("llmrec predict: error: option --k: got 999, expected an integer in "
                                               "1..24 (the catalog size)")
    assert not out.exists() and not (tmp_path / "r.parquet.parts").exists()
