"""`slm finetune` and `slm merge-lora`: thin calls of slmkit.api (finetune, merge_adapter)."""

from __future__ import annotations

from slmkit import api
from slmkit.cli.command import add_command
from slmkit.cli.options import add_options, options_from_args


def register(subparsers) -> None:
    add_command(
        subparsers, "finetune", _finetune_arguments, _finetune,
        help="supervised fine-tuning on chat rows (full weights or LoRA), loss on responses only",
        description="Fine-tune a checkpoint (or a run's best) on JSONL rows of prompt/response pairs or chat "
                    "messages, rendered with the ChatML template (<|im_start|>role ... <|im_end|>; the tokens are "
                    "added when the base has none). The loss counts response tokens only; short examples are "
                    "packed with attention kept inside each. Without --data, the shipped instruction set. "
                    "The run directory is an ordinary run: report, metrics, checkpoints; answers.md holds "
                    "answers to held-out prompts.")

    add_command(
        subparsers, "merge-lora", _merge_arguments, _merge,
        help="merge a LoRA adapter into its base model: a plain checkpoint",
        description="Write a full slmkit checkpoint whose weights are the base's plus the adapter's update. The "
                    "adapter names its base (path and weights hash); --base points at a moved copy of it.")


def _finetune_arguments(finetune) -> None:
    finetune.add_argument("base", metavar="BASE", help="the checkpoint or run directory to start from")
    add_options(finetune, api.FinetuneOptions)
    finetune.add_argument("--quiet", action="store_true", help="print only errors")


def _merge_arguments(merge) -> None:
    merge.add_argument("adapter", metavar="ADAPTER", help="an adapter directory (RUN/adapter from slm finetune --lora)")
    merge.add_argument("out", metavar="OUT", help="the checkpoint directory to write")
    merge.add_argument("--base", default=None, help="the base checkpoint (default: the one the adapter names)")
    merge.add_argument("--overwrite", action="store_true", help="replace OUT when it is an earlier merge")


def _finetune(args) -> int:
    options = options_from_args(api.FinetuneOptions, args)
    result = api.finetune(args.base, options, quiet=args.quiet)
    if not args.quiet:
        print(f"\nrun: {result.run_dir} (step {result.step:,}, {result.stop_reason}); chat with it: "
              f"slm chat {result.run_dir}")
    return 130 if result.interrupted else 0


def _merge(args) -> int:
    out = api.merge_adapter(args.adapter, args.out, base_dir=args.base, overwrite=args.overwrite)
    print(f"merged checkpoint: {out}")
    return 0
