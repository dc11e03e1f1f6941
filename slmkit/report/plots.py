"""The report's PNG plots: training loss with the learning rate, evaluation loss and perplexity,
and throughput. Each is written atomically (a temporary file renamed into place)."""

from __future__ import annotations

from pathlib import Path

from slmkit.utils import atomic_file


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend. Imported on first plot only: it adds about
    0.2 s to every command that imports the API."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` atomically (its folder made if needed), then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return path


def plot_loss_and_lr(train: list[dict], path: Path) -> Path | None:
    """Training loss (left axis) and learning rate (right axis) against the step."""
    if not train:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [e["step"] for e in train]
    ax.plot(steps, [e["loss"] for e in train], color="tab:blue", linewidth=1, label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats)", color="tab:blue")
    lr_axis = ax.twinx()
    lr_axis.plot(steps, [e["lr"] for e in train], color="tab:orange", linewidth=1, label="learning rate")
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    ax.set_title("Training loss and learning rate")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_eval(evals: list[dict], path: Path) -> Path | None:
    """Validation and training loss on the fixed samples (left), validation perplexity (right)."""
    if not evals:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [e["step"] for e in evals]
    left.plot(steps, [e["val_loss"] for e in evals], marker="o", label="validation")
    left.plot(steps, [e["train_loss"] for e in evals], marker="o", label="training (same-size sample)")
    ema = [e for e in evals if e.get("ema_val_loss") is not None]  # train.ema_decay: the weights' average
    if ema:
        left.plot([e["step"] for e in ema], [e["ema_val_loss"] for e in ema], marker="o", label="validation, EMA weights")
    left.set_xlabel("step")
    left.set_ylabel("loss (nats)")
    left.set_title("Evaluation loss")
    left.legend()
    left.grid(alpha=0.3)
    perplexities = [e["val_ppl"] for e in evals]
    right.plot(steps, perplexities, marker="o", color="tab:green", label="raw weights")
    if ema:
        right.plot([e["step"] for e in ema], [e["ema_val_ppl"] for e in ema], marker="o", color="tab:red",
                   label="EMA weights")
        right.legend()
        perplexities = perplexities + [e["ema_val_ppl"] for e in ema]
    right.set_xlabel("step")
    right.set_ylabel("validation perplexity")
    if max(perplexities) > 10 * min(perplexities):  # log scale only when the range needs it
        right.set_yscale("log")
    right.set_title("Validation perplexity")
    right.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def plot_throughput(train: list[dict], path: Path) -> Path | None:
    """Tokens per second (left axis) and MFU where known (right axis) against the step."""
    points = [e for e in train if e.get("tokens_per_s") is not None]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [e["step"] for e in points]
    ax.plot(steps, [e["tokens_per_s"] for e in points], color="tab:purple", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("tokens / s (all processes)", color="tab:purple")
    mfu = [(e["step"], e["mfu"]) for e in points if e.get("mfu") is not None]
    if mfu:
        mfu_axis = ax.twinx()
        mfu_axis.plot([s for s, _ in mfu], [100 * m for _, m in mfu], color="tab:gray", linewidth=1)
        mfu_axis.set_ylabel("MFU (%)", color="tab:gray")
    ax.set_title("Throughput")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
