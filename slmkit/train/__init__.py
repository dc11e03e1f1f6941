"""Training: a resolved run config in, a run directory out.

    from slmkit.train import resolve_run, Trainer
    run = resolve_run("data/shakespeare", "runs/nano", preset="nano", overrides=["train.max_steps=500"])
    result = Trainer(run).run()

`slmkit.api.train` chains this with the samples and the report; most users call that (or `slm train`).
The run directory holds config.json, metrics.jsonl, checkpoints/{step-N,best,last}/ (see
docs/training.md and slmkit/rundir.py).
"""

from slmkit.train.config import TrainConfig
from slmkit.train.run_config import RunConfig, TrainResult, free_run_dir, resolve_run
from slmkit.train.trainer import Trainer

__all__ = ["RunConfig", "TrainConfig", "TrainResult", "Trainer", "free_run_dir", "resolve_run"]
