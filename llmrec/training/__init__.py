"""Pieces every training stage shares (encoders, SFT, S-DPO): the trainer, its options, callbacks, loggers, progress.

- `options.TrainerOptions`: the trainer options (device, precision, seed, progress bar, epochs, steps, validation
  interval, resume), declared once and taken by each stage config with `trainer_option`;
- `trainer.build_trainer` / `trainer.fit_keeping_best`: the one `pl.Trainer` of every stage, and its fit;
- `keep_best.KeepBest`: keep the best VALID round's trainable weights and restore them at the end;
- `divergence.DivergenceGuard`: stop with `TrainingDiverged` when the loss or a trainable weight becomes
  nan/inf, so no checkpoint that looks finished is saved from a diverged run;
- `resume`: the state to continue an interrupted run from (`--resume`);
- `loggers`, `progress`: logging and progress reporting (a bar on a terminal, a log line every 30 s elsewhere).
"""
