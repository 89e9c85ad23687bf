"""The one marker reader (`llmrec.base.markers`): its error format, its quiet variant, typed facts built from it,
and the checkpoint facts' JSON being exactly what earlier llmrec versions wrote."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from llmrec.base.errors import CheckpointError, DataError
from llmrec.base.markers import (
    OMIT_IF,
    MarkerSpec,
    check_fields,
    find_marker,
    from_dict,
    marker_message,
    read_marker,
    to_dict,
    write_marker,
)
from llmrec.encoders.facts import EncoderFacts, TrainedOn, read_encoder_facts
from llmrec.llm.facts import LLMFacts, SdpoFacts, read_llm_facts

SPEC = MarkerSpec(kind="tool-thing", version=3, what="a tool thing", writer="`tool make`")


def test_the_one_error_format_names_the_file_the_problem_and_what_was_expected(tmp_path):
    f = tmp_path / "thing.json"
    cases = [
        (None, rf"{tmp_path}/thing.json: missing, so {tmp_path} is not a tool thing; expected a tool thing written by "
               r"`tool make`; run `tool make` \(missing\)$"),
        ("{oops", r"thing.json: damaged \(not valid JSON: Expecting property name .*\); expected a tool thing written "
                  r"by `tool make`; run `tool make` \(damaged\)$"),
        ("[1, 2]", r"thing.json: damaged \(a list, not an object\); expected a tool thing written by `tool make`; "
                   r"run `tool make` \(not-object\)$"),
        ('{"format": "other"}', rf"thing.json: format 'other', so {tmp_path} is not a tool thing; expected a tool "
                                r"thing written by `tool make`; run `tool make` \(kind\)$"),
        ('{"n": 1}', rf"thing.json: no `format` field, so {tmp_path} is not a tool thing; expected .* \(kind\)$"),
        ('{"format": "tool-thing", "format_version": 2}', r"thing.json: format version 2; expected version 3 \(the "
                                                          r"one this llmrec reads\) of a tool thing; run `tool make` "
                                                          r"\(version\)$"),
    ]
    for text, message in cases:
        if text is not None:
            f.write_text(text)
        with pytest.raises(DataError, match=message) as e:
            read_marker(f, SPEC, error=DataError, advice=lambda problem: f"run `tool make` ({problem})")
        assert "\n" not in str(e.value)
    f.write_bytes(b"\xff\xfe{")
    with pytest.raises(DataError, match=r"thing.json: damaged \(not UTF-8 text\); expected a tool thing"):
        read_marker(f, SPEC, error=DataError)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DataError, match=r"dir.json: not a file, so .* is not a tool thing"):
        read_marker(tmp_path / "dir.json", SPEC, error=DataError)
    assert marker_message("a.json", "broken", "whole", "fix it") == "a.json: broken; expected whole; fix it"
    assert marker_message("a.json", "broken", "whole") == "a.json: broken; expected whole"


def test_a_yaml_section_marker_and_a_plain_facts_file(tmp_path):
    spec = dataclasses.replace(SPEC, section="thing")
    (tmp_path / "config.yaml").write_text("lr: 0.1\nthing:\n  format: tool-thing\n  format_version: 3\n  n: 4\n")
    assert read_marker(tmp_path / "config.yaml", spec) == {"format": "tool-thing", "format_version": 3, "n": 4}
    (tmp_path / "config.yaml").write_text("lr: 0.1\n")
    with pytest.raises(CheckpointError, match=r"config.yaml: no `thing:` section, so .* is not a tool thing"):
        read_marker(tmp_path / "config.yaml", spec, error=CheckpointError)
    (tmp_path / "config.yaml").write_text("thing: [1\n")
    with pytest.raises(CheckpointError, match=r"config.yaml: damaged \(not valid YAML: .*\); expected a tool thing"):
        read_marker(tmp_path / "config.yaml", spec, error=CheckpointError)
    plain = MarkerSpec(kind=None, version=None, what="a pointer", writer="the tool")
    (tmp_path / "latest.json").write_text('{"state": "state-4"}')
    assert read_marker(tmp_path / "latest.json", plain) == {"state": "state-4"}


def test_find_marker_is_quiet_and_write_marker_is_atomic_with_the_format_first(tmp_path):
    f = tmp_path / "m.json"
    assert find_marker(f, SPEC) is None
    f.write_text("{oops")
    assert find_marker(f, SPEC) is None
    f.write_text('{"format": "tool-thing", "format_version": 1}')
    assert find_marker(f, SPEC) == {"format": "tool-thing", "format_version": 1}  # the version is not asked
    assert find_marker(f, SPEC, check_version=True) is None
    write_marker(f, SPEC, {"n": 2, "format": "ignored"})
    assert f.read_text() == '{\n  "format": "tool-thing",\n  "format_version": 3,\n  "n": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left
    assert oct(f.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class _Inner:
    path: str
    extra: int | None = None


@dataclass(frozen=True)
class _Facts:
    name: str
    count: int
    ratio: float
    mode: Literal["a", "b"]
    inner: _Inner
    tags: dict[str, Any] | None = None
    stage: str = field(default="one", metadata={OMIT_IF: "one"})


def test_from_dict_checks_every_field_and_names_it(tmp_path):
    good = {"name": "x", "count": 2, "ratio": 1, "mode": "a", "inner": {"path": "p"}, "unknown": "kept out"}
    facts = from_dict(_Facts, good, "f.json", spec=SPEC)
    assert facts == _Facts("x", 2, 1, "a", _Inner("p"))
    assert to_dict(facts) == {"name": "x", "count": 2, "ratio": 1, "mode": "a",
                              "inner": {"path": "p", "extra": None}, "tags": None}  # `stage` omitted: its default
    assert to_dict(dataclasses.replace(facts, stage="two"))["stage"] == "two"
    bad = [({"count": True}, r"f.json: field `count` is True \(a boolean\); expected an integer; retrain$"),
           ({"count": "2"}, r"field `count` is '2' \(a string\); expected an integer"),
           ({"ratio": None}, r"field `ratio` is None \(null\); expected a number"),
           ({"mode": "c"}, r"field `mode` is 'c' \(a string\); expected one of 'a', 'b'"),
           ({"inner": {"path": 3}}, r"field `inner.path` is 3 \(an integer\); expected a string"),
           ({"inner": {}}, r"field `inner.path` is missing; expected a string"),
           ({"tags": [1]}, r"field `tags` is \[1\] \(a list\); expected an object or null"),
           ({"count": "y" * 100}, r"field `count` is 'y{56}\.\.\. \(a string\)")]  # a long value is cut
    for change, message in bad:
        with pytest.raises(CheckpointError, match=message):
            from_dict(_Facts, {**good, **change}, "f.json", spec=SPEC, error=CheckpointError, advice="retrain")
    with pytest.raises(CheckpointError, match=r"f.json: field `count` is missing; expected an integer"):
        from_dict(_Facts, {k: v for k, v in good.items() if k != "count"}, "f.json", spec=SPEC, error=CheckpointError)
    check_fields({"files": {}}, {"files": dict}, "m.json", spec=SPEC)
    with pytest.raises(DataError, match=r"m.json: field `files` is missing; expected an object"):
        check_fields({}, {"files": dict}, "m.json", spec=SPEC, error=DataError)


# What `llmrec train-llm` wrote before the facts were typed (key order included), and what `train-sdpo` added.
SFT_JSON = {
    "format": "llmrec-llm-checkpoint", "format_version": 2, "finetune": "full", "prompt": "hybrid",
    "score_norm": "sum", "domain": "movies", "max_length": 512, "seed": 0, "protocol": "llara",
    "catalog_fingerprint": "ab" * 32,
    "split": {"protocol": "llara", "seed": 0, "eval_positions": "all", "users_sha256": "cd" * 32},
    "n_candidates": 6, "max_history": 10,
    "base": {"path": "/cache/tiny-llama", "relative": "../cache/tiny-llama",
             "tiny": {"layers": 2, "hidden": 32, "heads": 2, "max_length": 512, "seed": 0, "tokenizer": "word",
                      "bpe_vocab": 400},
             "fingerprint": {"model_type": "llama", "config_sha256": "ef" * 32, "tokenizer_size": 120,
                             "embedding_rows": 124, "hidden_size": 32, "weights_probe_sha256": "01" * 32}},
    "first_new_row": 120, "embedding_rows": 124, "vocab_size": 124, "llm_hidden": 32, "encoder_hidden": 16,
    "encoder_fingerprint": "23" * 32}
SDPO_JSON = {**SFT_JSON, "stage": "sdpo",
             "sdpo": {"sft": "/runs/sft", "loss": "sdpo", "negatives": 3, "negatives_option": 3, "beta": 1.0,
                      "beta_prime": 1.0, "beta_rho": 0.2, "beta_alpha": 0.6, "alpha": 0.2, "gamma_beta_ratio": 0.6,
                      "seed": 0, "fairness_weights": "none"}}


def test_llm_facts_write_exactly_the_json_earlier_versions_wrote(tmp_path):
    for written in (SFT_JSON, SDPO_JSON):
        facts = LLMFacts.from_dict(written)
        assert json.dumps(facts.to_dict(), indent=2) == json.dumps(written, indent=2)  # same keys, values, order
    sft = LLMFacts.from_dict(SFT_JSON)
    assert sft.stage == "sft" and sft.sdpo is None and sft.hybrid and sft.base.fingerprint["tokenizer_size"] == 120
    sdpo = LLMFacts.from_dict(SDPO_JSON)
    assert sdpo.sdpo == SdpoFacts("/runs/sft", "sdpo", 3, 3, 1.0, 1.0, 0.2, 0.6, 0.2, 0.6, 0, "none")
    # the internal tiny_folder (where the tiny base is copied from while saving) is never written
    private = dataclasses.replace(sft, base=dataclasses.replace(sft.base, tiny_folder="/cache/tiny-llama"))
    assert private.to_dict() == SFT_JSON
    # older checkpoints: keys added later take their documented defaults
    old = {k: v for k, v in SFT_JSON.items() if k not in ("score_norm", "domain", "split", "n_candidates",
                                                          "max_history", "llm_hidden")}
    facts = LLMFacts.from_dict(old)
    assert (facts.score_norm, facts.domain, facts.split, facts.n_candidates) == ("sum", "generic", None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.seed = 1  # type: ignore[misc]


def test_read_llm_facts_names_the_folder_and_the_field(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder .*nowhere does not exist; train one"):
        read_llm_facts(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path))}/checkpoint.json: missing, so "
                                              rf"{re.escape(str(tmp_path))} is not an LLM checkpoint; expected an LLM "
                                              r"checkpoint written by `llmrec train-llm` or `llmrec train-sdpo`$"):
        read_llm_facts(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps({**SFT_JSON, "format_version": 1}))
    with pytest.raises(CheckpointError, match=r"checkpoint.json: format version 1; expected version 2 .*; retrain it "
                                              r"with `llmrec train-llm`$"):
        read_llm_facts(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps({**SFT_JSON, "seed": "zero"}))
    with pytest.raises(CheckpointError, match=r"checkpoint.json: field `seed` is 'zero' \(a string\); expected an "
                                              r"integer; retrain it with `llmrec train-llm`$"):
        read_llm_facts(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps(SFT_JSON))
    assert read_llm_facts(tmp_path) == LLMFacts.from_dict(SFT_JSON)


def test_encoder_facts_write_exactly_the_section_earlier_versions_wrote(tmp_path):
    bare = {"format": "llmrec-encoder", "format_version": 1, "model": "sasrec", "hparams": {"hidden_size": 16},
            "n_items": 40, "hidden_size": 16, "max_length": 10}
    trained = {**bare, "dataset": {"name": "ml-100k", "protocol": "llara", "seed": 0, "eval_positions": "all",
                                   "path": "data/processed/ml-100k"},
               "catalog_fingerprint": "ab" * 32, "split": {"protocol": "llara", "users_sha256": "cd" * 32}}
    for written in (bare, trained):
        assert json.dumps(EncoderFacts.from_dict(written).to_dict()) == json.dumps(written)
    assert EncoderFacts.from_dict(trained).dataset == TrainedOn("ml-100k", "llara", 0, "all", "data/processed/ml-100k")
    (tmp_path / "config.yaml").write_text("encoder:\n  format: llmrec-encoder\n  format_version: 1\n  model: gru4rec\n"
                                          "  hparams: {}\n  n_items: many\n")
    with pytest.raises(CheckpointError, match=r"config.yaml: field `encoder.n_items` is 'many' \(a string\); "
                                              r"expected an integer; retrain it with `llmrec train-encoder`$"):
        read_encoder_facts(tmp_path)
