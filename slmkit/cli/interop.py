"""`slm import-hf`, `slm export-hf` and `slm push`: Hugging Face model directories to slmkit checkpoints and
back, and exports uploaded to the Hub (thin calls of `slmkit.api`)."""

from __future__ import annotations

from pathlib import Path

from slmkit import api
from slmkit.cli.command import add_command
from slmkit.errors import SlmError


def register(subparsers) -> None:
    add_command(
        subparsers, "import-hf", _import_hf_arguments, _import_hf,
        help="convert a local Hugging Face model directory into an slmkit checkpoint",
        description="Convert a Hugging Face GPT-2, Llama/SmolLM2, Gemma 3 or GPT-NeoX model directory (config.json "
                    "plus safetensors, or pytorch_model.bin read without running code) into an slmkit checkpoint.",
    )

    add_command(
        subparsers, "export-hf", _export_hf_arguments, _export_hf,
        help="write an slmkit checkpoint (or LoRA adapter) in Hugging Face format",
        description="Write an slmkit checkpoint (or a run's best/last checkpoint) as config.json plus "
                    "model.safetensors that transformers.AutoModelForCausalLM.from_pretrained loads, with the "
                    "tokenizer, generation_config.json and a model card (README.md) written from the run. Given a "
                    "LoRA adapter (RUN/adapter of slm finetune --lora), write it as a PEFT adapter for the export "
                    "of its base: peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_HF), OUT).",
    )

    add_command(
        subparsers, "push", _push_arguments, _push,
        help="upload a model to the Hugging Face Hub",
        description="Upload an HF export (slm export-hf), or a checkpoint, run or LoRA adapter exported on the way, "
                    "to a Hugging Face Hub model repository (created when missing) with huggingface_hub. Needs the network and a "
                    "token with write access (hf auth login, HF_TOKEN or --token).",
    )


def _import_hf_arguments(imp) -> None:
    imp.add_argument("hf_dir", metavar="HF_DIR", help="the Hugging Face model directory (holds config.json)")
    imp.add_argument("out", metavar="OUT", help="the slmkit checkpoint directory to write")
    imp.add_argument("--force", action="store_true",
                     help="replace OUT when it is empty or an earlier import-hf output (never the input, a run, a "
                          "dataset or another checkpoint)")


def _export_hf_arguments(exp) -> None:
    exp.add_argument("ckpt", metavar="CKPT", help="an slmkit checkpoint or run directory, or a LoRA adapter directory")
    exp.add_argument("out", metavar="OUT", help="the Hugging Face model (or PEFT adapter) directory to write")
    exp.add_argument("--force", action="store_true",
                     help="replace OUT when it is empty or an earlier export-hf output (never the input run or "
                          "checkpoint, a folder around them, a dataset or another checkpoint)")
    _add_export_options(exp)
    exp.add_argument("--no-card", dest="card", action="store_false", help="write no model card (README.md)")
    exp.add_argument("--model-id", default=None,
                     help="what the card's usage example loads, e.g. the Hub repository you will push to "
                          "(default: OUT)")
    exp.add_argument("--base-model", default=None, metavar="HF_DIR_OR_ID",
                     help="for a LoRA adapter: the Hugging Face export of its base (slm export-hf BASE HF_DIR; checked "
                          "to be that model) or its Hub id, recorded in adapter_config.json")


def _push_arguments(push) -> None:
    push.add_argument("source", metavar="RUN_OR_EXPORT",
                      help="an HF export or PEFT adapter directory, or a checkpoint, run or LoRA adapter")
    push.add_argument("repo", metavar="REPO", help="the Hub repository: NAME or OWNER/NAME")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--token", default=None,
                      help="a Hub token with write access (default: HF_TOKEN, else the stored login; a token on the "
                           "command line is visible to other users of this machine)")
    _add_export_options(push, when=" (when exporting a checkpoint or run)")
    push.add_argument("--base-model", default=None, metavar="HF_ID",
                      help="for an slmkit LoRA adapter: the Hub repository of its base's export, recorded in "
                           "adapter_config.json")


def _add_export_options(parser, when: str = "") -> None:
    parser.add_argument("--license", default=api.DEFAULT_LICENSE,
                        help=f"the model card's license, a Hub id such as mit or apache-2.0 (default: other){when}")
    parser.add_argument("--preset", choices=api.GENERATION_PRESETS, default=api.DEFAULT_GENERATION_PRESET,
                        help=f"sampling defaults written to generation_config.json (default: "
                             f"{api.DEFAULT_GENERATION_PRESET}, as slm generate){when}")
    parser.add_argument("--no-audit", dest="audit", action="store_false",
                        help=f"leave the slm audit verdict out of the model card (the audit reads the run's "
                             f"dataset){when}")


def _import_hf(args) -> int:
    out = api.import_hf(args.hf_dir, args.out, overwrite=args.force)
    print(f"wrote slmkit checkpoint {out}")
    return 0


def _export_hf(args) -> int:
    if api.is_adapter_dir(args.ckpt):
        out = api.export_adapter_hf(args.ckpt, args.out, base_model=args.base_model, overwrite=args.force)
        if args.base_model is not None and not Path(args.base_model).is_dir():
            print(f"note: {args.base_model} is no local directory, so it is recorded as a Hugging Face Hub id, unchecked")
        base = args.base_model or "BASE_HF_DIR"
        print(f"wrote PEFT adapter {out}; load it with peft.PeftModel.from_pretrained("
              f"AutoModelForCausalLM.from_pretrained({base!r}), {str(out)!r})")
        if args.base_model is None:
            print("export its base with `slm export-hf BASE BASE_HF_DIR` (BASE: the checkpoint the adapter names) "
                  "and pass --base-model BASE_HF_DIR to record it in adapter_config.json")
        return 0
    if args.base_model is not None:
        raise SlmError(f"--base-model names the base of a LoRA adapter; {args.ckpt} is not an adapter directory")
    out = api.export_hf(args.ckpt, args.out, overwrite=args.force, card=args.card, license=args.license,
                        generation_preset=args.preset, audit=args.audit, model_id=args.model_id)
    print(f"wrote Hugging Face model {out}")
    return 0


def _push(args) -> int:
    url = api.push(args.source, args.repo, private=args.private, token=args.token, license=args.license,
                   generation_preset=args.preset, audit=args.audit, base_model=args.base_model)
    print(f"pushed to {url}")
    return 0
