"""Where training curves go: Lightning's CSV logger always, TensorBoard when it is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOG_DIR = "logs"


def training_loggers(folder: Path) -> list[Any]:
    """Loggers writing under `folder/logs/` (`csv/metrics.csv`, and `tensorboard/` when available)."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Any] = [CSVLogger(save_dir=str(folder), name=LOG_DIR, version="csv")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(save_dir=str(folder), name=LOG_DIR, version="tensorboard",
                                         default_hp_metric=False))
    except ImportError:
        pass
    return loggers
