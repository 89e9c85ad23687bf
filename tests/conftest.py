"""The tests' shared fixtures, each defined once: the small LLM-test catalog and its mean encoder, the synthetic
datasets the encoder tests train on, ONE tiny SFT run through the CLI per session (served by the serving tests,
guarded by the output tests), the served checkpoint and its `Recommender`, and one torch thread for the tiny
models. The option sets they are built with live in tiny.py; the helpers that are not fixtures in
test_llm_support.py, test_serving_support.py and data_fixtures.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_llm_support import MeanEncoder, saved_encoder, tiny_dataset
from tiny import ONE_STEP, SMALL_DATA, TINY_LLAMA, flags, one_thread

from llmrec.data.dataset import ProcessedDataset


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """`tiny.one_thread` for a whole test file, which asks for it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    with one_thread():
        yield


# ------------------------------------------------------------------------------------------------ tiny data
@pytest.fixture(scope="module")
def small_data() -> ProcessedDataset:
    """The small catalog of the LLM tests (`tiny.SMALL_DATA`), in memory; built for each test file, which may
    alter it (it takes milliseconds)."""
    return tiny_dataset(**SMALL_DATA)


@pytest.fixture(scope="module")
def mean_encoder(small_data: ProcessedDataset) -> MeanEncoder:
    """A real (tiny) encoder of `small_data`'s catalog: the mean of the history's item embeddings."""
    return MeanEncoder(small_data.n_items)


@pytest.fixture(scope="session")
def synthetic_llara_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic `llara` dataset (50 users, 30 items, every evaluation position), shared read-only by
    the encoder tests."""
    from llmrec.encoders.synthetic import synthetic_dataset

    data = synthetic_dataset(n_users=50, n_items=30, protocol="llara", eval_positions="all")
    return data.save(tmp_path_factory.mktemp("synthetic") / "llara-all")


@pytest.fixture(scope="session")
def synthetic_loo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic `loo` dataset (40 users, 30 items: rows of fewer candidates), shared read-only."""
    from llmrec.encoders.synthetic import synthetic_dataset

    return synthetic_dataset(n_users=40, n_items=30, protocol="loo").save(tmp_path_factory.mktemp("synthetic") / "loo")


# ------------------------------------------------------------------------------------------------ one SFT run
@pytest.fixture(scope="session")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding `data/` (`small_data` prepared), `enc/` (a GRU4Rec saved without a faiss index), `sft/` (a
    tiny hybrid SFT checkpoint trained for one step with `llmrec train-llm`) and `cache/` (its tiny base): built
    once per session. Read-only: a test that writes next to it copies it first (`shutil.copytree`)."""
    from llmrec.commands.cli import main

    root = tmp_path_factory.mktemp("sft-run")
    tiny_dataset(**SMALL_DATA).save(root / "data")
    saved_encoder(ProcessedDataset.load(root / "data"), root / "enc")
    with one_thread():  # for the build only: this fixture outlives the module that first asks for it
        assert main(["train-llm", "--data", str(root / "data"), "--encoder", str(root / "enc"), "--out",
                     str(root / "sft"), "--cache-dir", str(root / "cache"), *flags(TINY_LLAMA), *flags(ONE_STEP),
                     "--no-progress-bar"]) == 0
    return root


@pytest.fixture(scope="session")
def lora_ckpt(sft_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA tiny hybrid checkpoint (one step) on the session's data and encoder: it carries its tiny base
    (`base/`), the adapter and the slot tokens' embedding rows. Built once per session; read-only."""
    from llmrec.commands.cli import main

    out = tmp_path_factory.mktemp("lora")
    with one_thread():
        assert main(["train-llm", "--data", str(sft_run / "data"), "--encoder", str(sft_run / "enc"), "--out",
                     str(out / "ckpt"), "--cache-dir", str(out / "cache"), "--finetune", "lora", *flags(TINY_LLAMA),
                     *flags(ONE_STEP), "--no-progress-bar"]) == 0
    return out / "ckpt"


@pytest.fixture(scope="module")
def ckpt(sft_run: Path) -> Path:
    """The session's tiny SFT checkpoint, as the serving tests load it."""
    return sft_run / "sft"


@pytest.fixture(scope="module")
def rec(ckpt: Path):
    """The session's checkpoint loaded for serving on the CPU (one per test file: tests may change its state)."""
    from llmrec.serving.recommender import Recommender

    return Recommender.from_pretrained(ckpt, device="cpu")


@pytest.fixture(scope="session")
def text_id_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding `data/` (`data_fixtures.write_text_id_log`, 250 items whose ids are text like B00001,
    prepared with `llmrec prepare --dataset custom`), `sasrec/` (one epoch) and `sft/` (a tiny hybrid SFT checkpoint
    trained for one step, 20 candidates per prompt), built once per session through the CLI as a user would. Its
    256-token prompt holds far fewer than 60 candidates. Read-only."""
    from data_fixtures import write_text_id_log

    from llmrec.commands.cli import main

    root = tmp_path_factory.mktemp("text-ids")
    with one_thread():
        assert main(["prepare", "--dataset", "custom", "--raw", str(write_text_id_log(root / "logs")),
                     "--user-column", "user", "--item-column", "item", "--time-column", "time", "--title-column",
                     "title", "--domain", "movies", "--eval-positions", "all", "--out", str(root / "data")]) == 0
        assert main(["train-encoder", "--data", str(root / "data"), "--model", "sasrec", "--hidden-size", "8",
                     "--max-length", "10", "--max-epochs", "1", "--device", "cpu", "--no-progress-bar",
                     "--out", str(root / "sasrec")]) == 0
        assert main(["train-llm", "--data", str(root / "data"), "--encoder", str(root / "sasrec"), "--out",
                     str(root / "sft"), "--cache-dir", str(root / "cache"), *flags(TINY_LLAMA), *flags(ONE_STEP),
                     "--max-test-samples", "8", "--no-progress-bar"]) == 0
    return root


@pytest.fixture(scope="module")
def encoder_dir(small_data, tmp_path_factory) -> Path:
    """A saved GRU4Rec checkpoint on `small_data` (one per test module)."""
    return saved_encoder(small_data, tmp_path_factory.mktemp("enc") / "gru4rec")


@pytest.fixture(scope="module")
def encoder(small_data, encoder_dir):
    """That checkpoint's encoder, loaded."""
    from llmrec.encoders.checkpoint import load_encoder

    return load_encoder(encoder_dir, small_data)
