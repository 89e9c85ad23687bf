"""`llmrec demo`: every stage of the pipeline on MovieLens-100K, at a small scale that runs on a laptop CPU.

Stages (each skipped when its output folder already holds a finished result, unless `--fresh`):
  1. prepare   ML-100K with the `llara` protocol and `--eval-positions all` (thousands of test samples; the
               `last` metrics are the per-user final-position subset), from the offline source chain;
  2. encoder   SASRec trained on it with the shipped preset, evaluated on the 20 stored candidates;
  3. llm       a tiny Llama recommender with hybrid prompts (LoRA-free full fine-tuning of the tiny model,
               projector, text -> hybrid curriculum) trained on a documented SUBSET of the training samples
               and evaluated in `score` mode on a subset of the test samples. The demo's LLM numbers are
               small-scale numbers; the full-scale figures are in the README's benchmark tables;
  4. sdpo      S-DPO (3 negatives per prompt, one prompt pass) from that SFT model, on a documented subset,
               evaluated on the same test samples;
  5. predict   the final model's top 10 for one test user over the whole catalog (retrieve with the encoder,
               re-rank with the LLM), printed as `llmrec predict` prints it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmrec.config import option

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("prepare", "encoder", "llm", "sdpo", "predict")
PRESETS = Path(__file__).parent / "configs"


@dataclass
class DemoConfig:
    """Options of `llmrec demo`."""

    data: Path = option(Path("data/processed/ml-100k-llara-all"), "where the prepared ML-100K goes")
    out: Path = option(Path("checkpoints/demo"), "where the demo's checkpoints go")
    seed: int = option(42, "seed of every stage", min=0, max=2**32 - 1)
    stages: list[str] = option(factory=lambda: list(STAGES), help="which stages to run, in order", choices=STAGES)
    encoder: Literal["sasrec", "gru4rec", "caser"] = option("sasrec", "sequential encoder to train")
    fresh: bool = option(False, "rerun stages whose output already exists")
    llm_preset: str = option("llm-tiny-cpu-small", "shipped preset of the LLM stage (llmrec/configs/<name>.yaml)")
    llm_test_samples: int = option(500, "LLM stage: rank a seeded subset of this many test samples", min=1)
    sdpo_preset: str = option("sdpo-tiny-cpu-small", "shipped preset of the S-DPO stage (llmrec/configs/<name>.yaml)")


def _finished(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()


def _print_metrics(title: str, metrics_file: Path, keys: tuple[str, ...]) -> None:
    metrics = json.loads(metrics_file.read_text())
    print(f"\n{title}")
    for split in ("valid", "test"):
        values = metrics.get(split, metrics)
        print(f"  {split:5s} " + "  ".join(f"{k}={values[k]:.4f}" for k in keys if k in values))


def run_demo(config: DemoConfig) -> int:
    from llmrec.errors import ConfigError

    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"option --stages: unknown stage(s) {', '.join(unknown)}; expected {', '.join(STAGES)}")
    started = time.perf_counter()
    out = Path(config.out)
    if "prepare" in config.stages:
        from llmrec.data.dataset import is_processed_dir
        from llmrec.data.prepare import PrepareConfig, run_prepare

        if config.fresh or not is_processed_dir(Path(config.data)):
            print("== stage 1/5: prepare MovieLens-100K (llara protocol, every eval position)")
            run_prepare(PrepareConfig(dataset="ml-100k", protocol="llara", eval_positions="all",
                                      seed=config.seed, out=Path(config.data)))
        else:
            print(f"== stage 1/5: prepare: reusing {config.data} (pass --fresh to rebuild)")
    encoder_dir = out / config.encoder
    if "encoder" in config.stages:
        from llmrec.config import resolve_config
        from llmrec.encoders.train import TrainEncoderConfig, run_train_encoder

        if config.fresh or not _finished(encoder_dir):
            print(f"== stage 2/5: train {config.encoder} on {config.data}")
            preset = PRESETS / f"encoder-{config.encoder}.yaml"
            enc_cfg = resolve_config(TrainEncoderConfig, {"data": config.data, "out": encoder_dir,
                                                          "model": config.encoder, "seed": config.seed},
                                     preset if preset.is_file() else None)
            run_train_encoder(enc_cfg)
        else:
            print(f"== stage 2/5: encoder: reusing {encoder_dir} (pass --fresh to retrain)")
            _print_metrics(f"{config.encoder} (20 candidates)", encoder_dir / "metrics.json",
                           ("candidates/hr@1", "candidates/hr@1_last", "candidates/ndcg@5"))
    if "llm" in config.stages:
        from llmrec.config import resolve_config
        from llmrec.llm.train import TrainLLMConfig, run_train_llm

        llm_dir = out / f"llm-hybrid-{config.encoder}"
        preset = PRESETS / f"{config.llm_preset}.yaml"
        if not preset.is_file():
            raise ConfigError(f"option --llm-preset: no shipped preset {preset}")
        if config.fresh or not _finished(llm_dir):
            print(f"== stage 3/5: train a tiny hybrid LLM recommender ({preset.name}: small scale, see the file)")
            llm_cfg = resolve_config(TrainLLMConfig, {"data": config.data, "encoder": encoder_dir, "out": llm_dir,
                                                      "seed": config.seed,
                                                      "max_test_samples": config.llm_test_samples}, preset)
            run_train_llm(llm_cfg)
        else:
            print(f"== stage 3/5: llm: reusing {llm_dir} (pass --fresh to retrain)")
        metrics = json.loads((llm_dir / "metrics.json").read_text())
        print(f"\ntiny hybrid LLM, score mode, {metrics.get('test/n_samples')} test samples (SMALL demo scale, "
              f"not the benchmark figure): hr@1={metrics['test/hr@1']:.4f}  "
              f"candidates/ndcg@5={metrics.get('test/candidates/ndcg@5', float('nan')):.4f}")
    if "sdpo" in config.stages:
        from llmrec.config import resolve_config
        from llmrec.preference.train import TrainSDPOConfig, run_train_sdpo

        llm_dir = out / f"llm-hybrid-{config.encoder}"
        sdpo_dir = out / f"sdpo-hybrid-{config.encoder}"
        preset = PRESETS / f"{config.sdpo_preset}.yaml"
        if not preset.is_file():
            raise ConfigError(f"option --sdpo-preset: no shipped preset {preset}")
        if config.fresh or not _finished(sdpo_dir):
            print(f"== stage 4/5: S-DPO from the SFT model ({preset.name}: small scale, see the file)")
            run_train_sdpo(resolve_config(TrainSDPOConfig, {"sft": llm_dir, "data": config.data, "out": sdpo_dir,
                                                            "seed": config.seed,
                                                            "max_test_samples": config.llm_test_samples}, preset))
        else:
            print(f"== stage 4/5: sdpo: reusing {sdpo_dir} (pass --fresh to retrain)")
        metrics = json.loads((sdpo_dir / "metrics.json").read_text())
        print(f"\ntiny hybrid LLM after S-DPO, score mode, {metrics.get('test/n_samples')} test samples (SMALL demo "
              f"scale): hr@1={metrics['test/hr@1']:.4f}  "
              f"candidates/ndcg@5={metrics.get('test/candidates/ndcg@5', float('nan')):.4f}")
    if "predict" in config.stages:
        from llmrec.data.dataset import ProcessedDataset
        from llmrec.serving.predict import PredictConfig, run_predict

        final = next((d for d in (out / f"sdpo-hybrid-{config.encoder}", out / f"llm-hybrid-{config.encoder}")
                      if _finished(d)), None)
        if final is None:
            raise ConfigError("option --stages: predict needs a trained LLM (the llm or sdpo stage)")
        test = ProcessedDataset.load(config.data).split("test")
        user = test.iloc[len(test) // 2]  # a test user the models never trained on
        history = [int(i) for i in user["history"]]
        print(f"== stage 5/5: predict: top 10 of the whole catalog for test user {int(user['user_id'])} "
              f"({final.name}), history of {len(history)} items (the true next item was {int(user['target'])})")
        run_predict(PredictConfig(ckpt=final, history=[",".join(map(str, history))], k=10, device="cpu"))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; outputs in {out} and {config.data}")
    return 0
