"""Training: building a model and its optimisers from a config and the one train step (`steps`),
the epoch loop with evaluation, early stopping and resume (`train`), checkpoints, the run
directory's lock and atomic files (`rundir`), config checks and migration of old keys
(`config_rules`, `config_migration`), the mask-rate schedule and the curve plots."""
