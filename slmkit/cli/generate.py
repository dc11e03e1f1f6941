"""`slm generate` and `slm chat`: thin calls of `slmkit.api` (load, generate).

The decoding flags are the fields of `GenerationConfig` (one flag each, by `add_options`); the
command-line details the config's module does not hold (help, flag names, parsing) are below.
"""

from __future__ import annotations

import argparse
import sys

from slmkit import api
from slmkit.cli.command import add_command
from slmkit.cli.options import add_options, given_options
from slmkit.errors import SlmError


def _early_stopping(text: str):
    values = {"true": True, "false": False, "never": "never"}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"{text!r}: use true, false or never")
    return values[text.lower()]


def generation_flags() -> dict[str, dict]:
    """Command-line details of GenerationConfig's fields; a field without an entry still gets --field-name."""
    return {
        "max_new_tokens": {"help": "tokens to generate at most (default 128)"},
        "temperature": {"help": "0 = greedy"},
        "top_k": {"help": "keep the k most likely tokens (0 = off)"},
        "top_p": {"help": "nucleus sampling mass in (0, 1]"},
        "min_p": {"help": "drop tokens below min-p x the top probability"},
        "repetition_penalty": {"help": "transformers' rule; 1 = off"},
        "temperature_decay": {"help": "multiply the temperature by this after each token (annealing)"},
        "seed": {"help": "for reproducible samples"},
        "num_beams": {"help": "beam search with this many beams"},
        "early_stopping": {"help": "true, false or never", "type": _early_stopping},
        "stop_strings": {"flag": "--stop", "metavar": "TEXT", "help": "stop before this text (repeatable)"},
        "stop_token_ids": {"flag": "--stop-token-id", "help": "stop at this token id (repeatable)"},
        "ignore_eot": {"help": "do not stop at end-of-text"},
        "overflow": {"choices": api.OVERFLOW_POLICIES, "help": "past the model's context: slide (default) or refuse"},
    }


def add_generation_arguments(parser) -> None:
    """The decoding flags shared by `generate` and `chat`; unset flags keep the preset's values."""
    parser.add_argument("model", metavar="MODEL", help="an slmkit checkpoint or run directory (best, else last)")
    parser.add_argument("--preset", choices=api.GENERATION_PRESETS, default=None,
                        help="sampling preset (default: coherent, or greedy with --num-beams)")
    add_options(parser, api.GenerationConfig, unset=True, metadata=generation_flags())
    parser.add_argument("--show-special", action="store_true", help="print special tokens")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(api.DTYPES), default=None)
    parser.add_argument("--tokenizer", default=None, help="tokenizer spec or dir (default: the checkpoint's)")


def register(subparsers) -> None:
    add_command(subparsers, "generate", _generate_arguments, _generate,
                help="continue a prompt with a trained model")

    add_command(
        subparsers, "chat", _chat_arguments, _chat,
        help="chat turn by turn with a fine-tuned model (its chat template), or continue text",
        description="With a model whose tokenizer has the chat tokens (one made by `slm finetune`), each line "
                    "is a user turn and the model answers in the chat template until <|im_end|>. Otherwise (or "
                    "with --raw) the model continues the transcript.")


def _generate_arguments(generate) -> None:
    add_generation_arguments(generate)
    generate.add_argument("--prompt", default="", help="text to continue (empty: start from end-of-text)")
    generate.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                          help="print tokens as they are made (default on; off for beam search)")


def _chat_arguments(chat) -> None:
    add_generation_arguments(chat)
    chat.add_argument("--system", default=None, help="a system message opening the conversation (template mode)")
    chat.add_argument("--raw", action="store_true", help="plain continuation even when the model has a template")


def generation_config(args) -> api.GenerationConfig:
    """The GenerationConfig of the parsed flags: the preset's values, then every flag given."""
    preset = args.preset or ("greedy" if (args.num_beams or 1) > 1 else "coherent")
    return api.resolve_config(preset, **given_options(api.GenerationConfig, args))


# What a command-line user does when the checkpoint has no tokenizer (the API's own text names tokenizer=).
TOKENIZER_REMEDY = "pass --tokenizer SPEC (gpt2, or a directory holding the tokenizer the model was trained with)"


def _load(args):
    """(model, tokenizer, GenerationConfig) from the parsed flags."""
    model = api.load(args.model, device=args.device, dtype=args.dtype)
    if args.tokenizer:
        tokenizer = api.load_tokenizer(args.tokenizer)
    else:
        tokenizer = api.model_tokenizer(model, required=True, remedy=TOKENIZER_REMEDY)
    return model, tokenizer, generation_config(args)


def _print_piece(row: int, text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class _StreamAfterStart:
    """Streaming output that writes the prompt only once generation has started (its first token or
    text), so an error found before then (a refused prompt, a broken model) is not preceded by it; an
    error after it starts on a line of its own."""

    def __init__(self, prompt: str):
        self.prompt = prompt
        self.started = False

    def start(self, *_) -> None:
        if not self.started:
            self.started = True
            sys.stdout.write(self.prompt)
            sys.stdout.flush()

    def on_text(self, row: int, text: str) -> None:
        self.start()
        _print_piece(row, text)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None and self.started and isinstance(error, (SlmError, KeyboardInterrupt)):
            sys.stdout.write("\n")  # the error message starts on a line of its own
            sys.stdout.flush()


def _generate(args) -> int:
    model, tokenizer, config = _load(args)
    stream = args.stream and config.num_beams == 1 and config.num_return_sequences == 1
    if stream:
        with _StreamAfterStart(args.prompt) as output:
            api.generate(model, args.prompt, config, tokenizer=tokenizer, skip_special_tokens=not args.show_special,
                         on_text=output.on_text, on_token=output.start)
        output.start()
        sys.stdout.write("\n")
        return 0
    result = api.generate(model, args.prompt, config, tokenizer=tokenizer, skip_special_tokens=not args.show_special)
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
    model, tokenizer, config = _load(args)
    if config.num_beams > 1 or config.num_return_sequences > 1:
        raise SlmError("chat streams one continuation: use --num-beams 1 and --num-return-sequences 1")
    if not args.raw and api.has_chat_template(tokenizer):
        return _chat_in_template(model, tokenizer, config, args.system)
    if args.system:
        raise SlmError("--system needs a model with a chat template (a fine-tuned one); this model continues text")
    transcript = ""

    def continue_transcript(line: str, on_text) -> None:
        nonlocal transcript
        transcript += line
        result = api.generate(model, transcript, config.replace(overflow="slide"), tokenizer=tokenizer,
                              skip_special_tokens=not args.show_special, on_text=on_text)
        transcript += result.text

    def clear() -> None:
        nonlocal transcript
        transcript = ""

    return _chat_loop("type text and the model continues it; empty line: continue", continue_transcript, clear,
                      "(transcript cleared)", skip_empty=False)


def _chat_in_template(model, tokenizer, config, system: str | None) -> int:
    """Each input line is a user turn; the model answers in the chat template."""
    session = api.ChatSession(model, tokenizer, config, system=system)
    return _chat_loop("the model answers in its chat template", lambda line, on_text: session.reply(line, on_text),
                      session.reset, "(conversation cleared)", skip_empty=True)


def _chat_loop(banner: str, respond, reset, cleared: str, skip_empty: bool) -> int:
    """Read lines from stdin until /quit or the end of input: /reset calls reset(), any other line
    respond(line, on_text) with the reply streamed to stdout."""
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"slm chat: {banner}; /reset; /quit")
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            break
        if line.strip() == "/reset":
            reset()
            print(cleared)
            continue
        line = line.strip() if skip_empty else line.rstrip("\n")
        if skip_empty and not line:
            continue
        with _StreamAfterStart("") as reply:
            respond(line, reply.on_text)
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0
