"""`slm generate` and `slm chat`: thin calls of `slmkit.generate`."""

from __future__ import annotations

import argparse
import sys


def _early_stopping(text: str):
    values = {"true": True, "false": False, "never": "never"}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"{text!r}: use true, false or never")
    return values[text.lower()]


def add_generation_arguments(parser) -> None:
    """The decoding flags shared by `generate` and `chat`; unset flags keep the preset's values."""
    from slmkit.generate.config import OVERFLOW_POLICIES, PRESETS

    parser.add_argument("model", metavar="MODEL", help="an slmkit checkpoint or run directory (best, else last)")
    parser.add_argument("--preset", choices=list(PRESETS), default=None,
                        help="sampling preset (default: coherent, or greedy with --num-beams)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate at most (default 128)")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    parser.add_argument("--min-p", type=float, default=None, help="drop tokens below min-p x the top probability")
    parser.add_argument("--repetition-penalty", type=float, default=None, help="transformers' rule; 1 = off")
    parser.add_argument("--presence-penalty", type=float, default=None)
    parser.add_argument("--frequency-penalty", type=float, default=None)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None)
    parser.add_argument("--temperature-decay", type=float, default=None,
                        help="multiply the temperature by this after each token (annealing)")
    parser.add_argument("--min-temperature", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="for reproducible samples")
    parser.add_argument("--num-beams", type=int, default=None, help="beam search with this many beams")
    parser.add_argument("--length-penalty", type=float, default=None)
    parser.add_argument("--early-stopping", type=_early_stopping, default=None, help="true, false or never")
    parser.add_argument("--num-return-sequences", type=int, default=None)
    parser.add_argument("--stop", dest="stop_strings", action="append", default=None, metavar="TEXT",
                        help="stop before this text (repeatable)")
    parser.add_argument("--stop-token-id", dest="stop_token_ids", type=int, action="append", default=None)
    parser.add_argument("--ignore-eot", action="store_true", default=None, help="do not stop at end-of-text")
    parser.add_argument("--overflow", choices=OVERFLOW_POLICIES, default=None,
                        help="past the model's context: slide (default) or refuse")
    parser.add_argument("--show-special", action="store_true", help="print special tokens")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--tokenizer", default=None, help="tokenizer spec or dir (default: the checkpoint's)")


def register(subparsers) -> None:
    generate = subparsers.add_parser("generate", help="continue a prompt with a trained model")
    add_generation_arguments(generate)
    generate.add_argument("--prompt", default="", help="text to continue (empty: start from end-of-text)")
    generate.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                          help="print tokens as they are made (default on; off for beam search)")
    generate.set_defaults(run=_generate)

    chat = subparsers.add_parser("chat", help="interactive continuation: type, the model continues")
    add_generation_arguments(chat)
    chat.set_defaults(run=_chat)


_CONFIG_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                 "presence_penalty", "frequency_penalty", "no_repeat_ngram_size", "temperature_decay",
                 "min_temperature", "seed", "num_beams", "length_penalty", "early_stopping",
                 "num_return_sequences", "stop_strings", "stop_token_ids", "ignore_eot", "overflow")


def _load(args):
    """(model, tokenizer, GenerationConfig) from the parsed flags."""
    import torch

    import slmkit
    from slmkit.generate import model_tokenizer, resolve_config

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = slmkit.load(args.model, device=args.device, dtype=dtype)
    if args.tokenizer:
        from slmkit.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    else:
        tokenizer = model_tokenizer(model, required=True)
    preset = args.preset or ("greedy" if (args.num_beams or 1) > 1 else "coherent")
    config = resolve_config(preset, **{name: getattr(args, name) for name in _CONFIG_FLAGS})
    return model, tokenizer, config


def _print_piece(row: int, text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _generate(args) -> int:
    from slmkit.generate import generate

    model, tokenizer, config = _load(args)
    stream = args.stream and config.num_beams == 1 and config.num_return_sequences == 1
    if stream:
        sys.stdout.write(args.prompt)
    result = generate(model, args.prompt, config, tokenizer=tokenizer, skip_special_tokens=not args.show_special,
                      on_text=_print_piece if stream else None)
    if stream:
        sys.stdout.write("\n")
        return 0
    results = result if isinstance(result, list) else [result]
    for rank, item in enumerate(results, 1):
        if len(results) > 1:
            score = f" score {item.score:.4f}" if item.score is not None else ""
            print(f"--- {rank}{score} ({item.finish_reason}, {len(item.tokens)} tokens)")
        print(args.prompt + item.text)
    return 0


def _chat(args) -> int:
    """Read lines from stdin; the model continues the whole transcript after each one.

    An empty line lets the model continue further; /reset clears the transcript; /quit or end of input ends.
    """
    from slmkit.errors import SlmError
    from slmkit.generate import generate

    model, tokenizer, config = _load(args)
    if config.num_beams > 1 or config.num_return_sequences > 1:
        raise SlmError("chat streams one continuation: use --num-beams 1 and --num-return-sequences 1")
    interactive = sys.stdin.isatty()
    if interactive:
        print("slm chat: type text and the model continues it; empty line: continue; /reset; /quit")
    transcript = ""
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            break
        line = line.rstrip("\n")
        if line.strip() == "/reset":
            transcript = ""
            print("(transcript cleared)")
            continue
        transcript += line
        result = generate(model, transcript, config.replace(overflow="slide"), tokenizer=tokenizer,
                          skip_special_tokens=not args.show_special, on_text=_print_piece)
        sys.stdout.write("\n")
        sys.stdout.flush()
        transcript += result.text
    return 0
