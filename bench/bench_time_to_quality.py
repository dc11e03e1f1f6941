"""Time to quality: validation bits per byte against wall-clock seconds, slmkit recipes against
nanoGPT's documented CPU configuration for character-level Shakespeare, on the same data and split.

    python bench/bench_time_to_quality.py --budget 180 --configs baseline,quickstart,muon
    python bench/bench_time_to_quality.py --budget 600 --configs baseline,best --write-docs

Every run is `slm train` in its own process on ../shared/data/shakespeare prepared with slmkit's
default split (by work): the baseline with a character tokenizer, the others with their own. The
curve is the trainer's evaluations (bits per byte on a fixed validation sample) against the run's
clock; the final figure is `slm eval` of the last checkpoint on the WHOLE validation split, and on a
text of other authors the models never saw (slmkit/eval/compare_text.jsonl, written for this
project), so a recipe that only fits Shakespeare's quirks shows itself. Bits per byte compare across
tokenizers. `--parallel 2` runs two configs at once (one thread each), for screening on a busy machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare"

# nanoGPT's README, "I only have a macbook": train_shakespeare_char.py with --device=cpu --compile=False
# --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
# --lr_decay_iters=2000 --dropout=0.0 (lr 1e-3 -> 1e-4 cosine, warmup 100, beta2 0.99, GPT-2 blocks).
BASELINE_MODEL = ["family=\"gpt2\"", "position=\"learned\"", "norm=\"layernorm\"", "norm_bias=true", "mlp=\"gelu\"",
                  "attention_bias=true", "mlp_bias=true", "n_layers=4", "n_heads=4", "d_model=128", "d_mlp=512",
                  "context_length=64", "tie_embeddings=true"]
BASELINE_TRAIN = ["train.batch_size=12", "train.seq_len=64", "train.lr=1e-3", "train.min_lr=1e-4",
                  "train.warmup_steps=100", "train.beta2=0.99", "train.weight_decay=0.1", "train.dropout=0.0"]

CONFIGS: dict[str, dict] = {
    "baseline": {"tokenizer": "char", "preset": "nano", "set": BASELINE_MODEL + BASELINE_TRAIN,
                 "about": "nanoGPT's CPU config for shakespeare_char (4 layers, d 128, context 64, batch 12)"},
    "quickstart": {"tokenizer": "bpe:4096", "preset": "nano",
                   "set": ["train.batch_size=8", "train.warmup_steps=30"],
                   "about": "the quick start before: nano, bpe:4096, batch 8 x 256"},
}


def candidate(name: str, tokenizer: str, about: str, *settings: str) -> None:
    CONFIGS[name] = {"tokenizer": tokenizer, "preset": "nano", "set": list(settings), "about": about}


CONFIGS["nano-quick"] = {"tokenizer": "bpe:4096", "preset": "nano-quick", "set": [],
                         "about": "the nano-quick preset (the quick start's recipe now)"}

# one change at a time from the quick start (each kept or dropped by its figure)
QUICK = ["train.batch_size=8", "train.warmup_steps=30"]
candidate("muon", "bpe:4096", "quick start + Muon", *QUICK, "train.optimizer=\"muon\"")
candidate("wsd", "bpe:4096", "quick start + WSD schedule", *QUICK, "train.schedule=\"wsd\"")
candidate("lr4e-3", "bpe:4096", "quick start + lr 4e-3", *QUICK, "train.lr=4e-3")
candidate("bpe2048", "bpe:2048", "quick start with bpe:2048", *QUICK)
candidate("bpe1024", "bpe:1024", "quick start with bpe:1024", *QUICK)
candidate("ctx128", "bpe:4096", "quick start, context 128, batch 16", "train.batch_size=16", "train.warmup_steps=30",
          "train.seq_len=128")
candidate("wide", "bpe:4096", "quick start, d_model 192, 6 heads, 3 KV heads", *QUICK, "d_model=192", "n_heads=6",
          "n_kv_heads=3", "d_mlp=512")
candidate("dropout", "bpe:4096", "quick start + dropout 0.1", *QUICK, "train.dropout=0.1")

# then the changes that helped, together
SHORT = ["train.batch_size=16", "train.seq_len=128", "train.warmup_steps=30"]
candidate("ctx128-wsd-lr", "bpe:4096", "context 128 + WSD + lr 4e-3", *SHORT, "train.schedule=\"wsd\"", "train.lr=4e-3")
candidate("ctx128-wsd-lr-wide", "bpe:4096", "context 128 + WSD + lr 4e-3 + d_model 192", *SHORT,
          "train.schedule=\"wsd\"", "train.lr=4e-3", "d_model=192", "n_heads=6", "n_kv_heads=3", "d_mlp=512")
candidate("ctx64-wsd-lr", "bpe:4096", "context 64, batch 32 + WSD + lr 4e-3", "train.batch_size=32",
          "train.seq_len=64", "train.warmup_steps=30", "train.schedule=\"wsd\"", "train.lr=4e-3")
# for the 10-minute budget: the same recipe with more capacity
CONFIGS["nano-quick-wide"] = {"tokenizer": "bpe:4096", "preset": "nano-quick", "about": "nano-quick, d_model 256",
                              "set": ["d_model=256", "n_heads=8", "n_kv_heads=4", "d_mlp=768"]}
CONFIGS["nano-quick-deep"] = {"tokenizer": "bpe:4096", "preset": "nano-quick", "about": "nano-quick, 8 layers",
                              "set": ["n_layers=8"]}
# the 10-minute runs repeat a 1.57M-token split 2.6 times: regularise, or spend fewer bytes per token
CONFIGS["nano-quick-dropout"] = {"tokenizer": "bpe:4096", "preset": "nano-quick", "about": "nano-quick + dropout 0.1",
                                 "set": ["train.dropout=0.1"]}
CONFIGS["nano-quick-bpe1024"] = {"tokenizer": "bpe:1024", "preset": "nano-quick", "about": "nano-quick on bpe:1024",
                                 "set": []}
CONFIGS["char-quick"] = {"tokenizer": "char", "preset": "nano-quick", "set": [],
                         "about": "nano-quick's model and schedule on the baseline's character tokenizer"}
# a quiet machine, one run at a time on both cores: compile pays for its ~20 s, and more tokens per
# second means more passes over the 1.57M-token split, so capacity and regularisation move with it
NQ = {"tokenizer": "bpe:4096", "preset": "nano-quick"}
CONFIGS["nq-compile"] = {**NQ, "about": "nano-quick + torch.compile", "set": ["train.compile=true"]}
CONFIGS["nq-compile-L6"] = {**NQ, "about": "nano-quick + compile, 6 layers", "set": ["train.compile=true", "n_layers=6"]}
CONFIGS["nq-compile-d192"] = {**NQ, "about": "nano-quick + compile, d_model 192",
                              "set": ["train.compile=true", "d_model=192", "n_heads=6", "n_kv_heads=3", "d_mlp=512"]}
CONFIGS["nq-compile-d256-drop"] = {**NQ, "about": "nano-quick + compile, d_model 256, dropout 0.1",
                                   "set": ["train.compile=true", "d_model=256", "n_heads=8", "n_kv_heads=4", "d_mlp=768",
                                           "train.dropout=0.1"]}
CONFIGS["nq-compile-d192-drop"] = {**NQ, "about": "nano-quick + compile, d_model 192, dropout 0.1",
                                   "set": ["train.compile=true", "d_model=192", "n_heads=6", "n_kv_heads=3", "d_mlp=512",
                                           "train.dropout=0.1"]}
CONFIGS["nq-compile-wd"] = {**NQ, "about": "nano-quick + compile, weight decay 0.5",
                            "set": ["train.compile=true", "train.weight_decay=0.5"]}
CONFIGS["nq-compile-drop"] = {**NQ, "about": "nano-quick + compile, dropout 0.1",
                              "set": ["train.compile=true", "train.dropout=0.1"]}
CONFIGS["nq-compile-d256"] = {**NQ, "about": "nano-quick + compile, d_model 256",
                              "set": ["train.compile=true", "d_model=256", "n_heads=8", "n_kv_heads=4", "d_mlp=768"]}
# the floor: how low do bigger, regularised models get on this split with 30 minutes (eager: dropout
# under torch.compile runs at less than half speed on CPU)
CONFIGS["floor-d192-drop"] = {**NQ, "about": "nano-quick, d_model 192, dropout 0.1",
                              "set": ["d_model=192", "n_heads=6", "n_kv_heads=3", "d_mlp=512", "train.dropout=0.1"]}
CONFIGS["floor-d256-L6-drop"] = {**NQ, "about": "nano-quick, d_model 256, 6 layers, dropout 0.2, lr 2e-3",
                                 "set": ["d_model=256", "n_heads=8", "n_kv_heads=4", "d_mlp=768", "n_layers=6",
                                         "train.dropout=0.2", "train.lr=2e-3"]}
candidate("ctx128-wsd-lr6e-3", "bpe:4096", "context 128 + WSD + lr 6e-3", *SHORT, "train.schedule=\"wsd\"",
          "train.lr=6e-3")


def run(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def cold_compile_env(work: Path, name: str) -> dict:
    """The environment of one run, with an empty torch.compile cache: a compiled run pays its whole
    compile time inside its budget, as a user's first run does, not the cache of an earlier run."""
    cache = Path(tempfile.mkdtemp(prefix=f"inductor-{name}-", dir=work))
    return {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}


def prepare(tokenizer: str, work: Path) -> Path:
    out = work / f"data-{tokenizer.replace(':', '')}"
    if not (out / "meta.json").is_file():
        subprocess.run([sys.executable, "-m", "slmkit", "prepare", str(SHAKESPEARE), "--tokenizer", tokenizer,
                        "--out", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def train_command(name: str, data: Path, out: Path, budget: float, threads: int) -> list[str]:
    config = CONFIGS[name]
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]  # the model's vocabulary is the data's
    settings = [f"vocab_size={vocab}", *config["set"], f"train.time_budget={budget}", "train.max_steps=10000000",
                f"train.eval_interval={config.get('eval_interval', 50)}", "train.eval_batches=4",
                "train.checkpoint_interval=0", "train.samples=0", "train.tensorboard=false", "train.wandb=false",
                f"train.threads={threads}", "train.log_interval=50"]
    command = [sys.executable, "-m", "slmkit", "train", "--data", str(data), "--out", str(out),
               "--preset", config["preset"], "--quiet", "--overwrite"]
    for setting in settings:
        command += ["--set", setting]
    return command


def final_scores(run_dir: Path, data: Path, other_text: Path) -> dict:
    from slmkit import api

    checkpoint = run_dir / "checkpoints" / "last"
    on_val = api.evaluate_models([checkpoint], data=data, progress=False).results[0]
    on_other = api.evaluate_models([checkpoint], texts=[other_text], progress=False).results[0]
    return {"val_bpb": on_val.bits_per_byte, "other_authors_bpb": on_other.bits_per_byte}


def curve(run_dir: Path) -> list[tuple[float, float, int, float]]:
    """(seconds, validation bpb, tokens read, training bpb) at each of the run's evaluations."""
    points = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "eval" and event.get("val_bpb") is not None:
            points.append((float(event["time"]), float(event["val_bpb"]), int(event["tokens"]),
                           float(event["train_bpb"])))
    return points


def passes(run_dir: Path, data: Path) -> dict:
    """Tokens the run read and how many passes over the training split that is."""
    read = 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        read = max(read, int(json.loads(line).get("tokens") or 0))
    split = json.loads((data / "meta.json").read_text())["splits"]["train"]["tokens"]
    return {"tokens_read": read, "train_tokens": split, "passes": round(read / split, 2)}


def plot(record: dict, path: str) -> None:
    """Validation bits per byte against wall-clock seconds (left) and against passes over the
    training split (right: where a recipe stops gaining from the data it repeats)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_pass) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for name, result in record["results"].items():
        points = result["curve"]
        label = f"{name} ({result['val_bpb']:.3f})"
        by_time.plot([p[0] for p in points], [p[1] for p in points], label=label)
        if len(points[0]) > 2 and result.get("train_tokens"):
            by_pass.plot([p[2] / result["train_tokens"] for p in points], [p[1] for p in points], label=label)
    by_time.set_xlabel("wall-clock seconds")
    by_time.set_ylabel("validation bits per byte (sample)")
    by_pass.set_xlabel("passes over the training split")
    for axis in (by_time, by_pass):
        axis.grid(alpha=0.3)
    by_time.legend()
    figure.suptitle(f"time to quality, {record['budget_s']:g} s budget")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=180.0, help="seconds of training per run")
    parser.add_argument("--configs", default="baseline,quickstart", help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--parallel", type=int, default=1, help="configs run at once (threads split between them)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ttq"))
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    parser.add_argument("--replot", default=None, metavar="JSON", help="only draw --plot from a JSON written before")
    args = parser.parse_args(argv)
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), args.plot or str(Path(args.replot).with_suffix(".png")))
        return 0
    if not SHAKESPEARE.is_dir():
        print(f"needs {SHAKESPEARE} (../shared/data beside the repository)", file=sys.stderr)
        return 2
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    other = work / "other_authors.txt"
    rows = [json.loads(line)["text"] for line in (ROOT / "slmkit" / "eval" / "compare_text.jsonl").read_text().splitlines()]
    other.write_text("\n\n".join(rows) + "\n", encoding="utf-8")
    data = {name: prepare(CONFIGS[name]["tokenizer"], work) for name in names}
    threads = max(1, (os.cpu_count() or 2) // args.parallel)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    results = {}
    for first in range(0, len(names), args.parallel):
        group = names[first:first + args.parallel]
        processes = {n: run(train_command(n, data[n], work / f"run-{n}", args.budget, threads), work / f"{n}.log",
                            env=cold_compile_env(work, n)) for n in group}
        for name, process in processes.items():
            if process.wait() != 0:
                print(f"{name} failed: see {work / (name + '.log')}", file=sys.stderr)
                return 1
        for name in group:
            run_dir = work / f"run-{name}"
            results[name] = {"about": CONFIGS[name]["about"], "tokenizer": CONFIGS[name]["tokenizer"],
                             "curve": curve(run_dir), **passes(run_dir, data[name]),
                             **final_scores(run_dir, data[name], other)}
            print(f"{name:12s} val {results[name]['val_bpb']:.3f} bpb, other authors "
                  f"{results[name]['other_authors_bpb']:.3f} bpb, {results[name]['passes']} passes "
                  f" ({CONFIGS[name]['about']})", flush=True)
    record = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "budget_s": args.budget, "parallel": args.parallel,
              "threads": threads, "load_before": load_before, "load_after": os.getloadavg(),
              "machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv),
              "results": results}
    if "baseline" in results:
        base = results["baseline"]["val_bpb"]
        for result in results.values():
            result["vs_baseline"] = result["val_bpb"] / base - 1
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    if args.plot:
        plot(record, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
