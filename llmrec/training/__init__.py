"""Pieces every training stage shares (encoders, SFT, S-DPO): callbacks, loggers, progress reporting.

- `keep_best.KeepBest`: keep the best VALID round's trainable weights and restore them at the end;
- `divergence.DivergenceGuard`: stop with `TrainingDiverged` when the loss or a trainable weight becomes
  nan/inf, so no checkpoint that looks finished is saved from a diverged run;
- `loggers`, `progress`: logging and progress reporting.
"""
