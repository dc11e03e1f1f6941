"""`slm import-hf` and `slm export-hf`: Hugging Face model directories to slmkit checkpoints and back
(thin calls of `slmkit.api`)."""

from __future__ import annotations

from slmkit import api


def register(subparsers) -> None:
    imp = subparsers.add_parser(
        "import-hf", help="convert a local Hugging Face model directory into an slmkit checkpoint",
        description="Convert a Hugging Face GPT-2, Llama/SmolLM2 or Gemma 3 model directory (config.json plus "
                    "safetensors, or pytorch_model.bin read without running code) into an slmkit checkpoint.",
    )
    imp.add_argument("hf_dir", metavar="HF_DIR", help="the Hugging Face model directory (holds config.json)")
    imp.add_argument("out", metavar="OUT", help="the slmkit checkpoint directory to write")
    imp.add_argument("--force", action="store_true",
                     help="replace OUT when it is empty or an earlier import-hf output (never the input, a run, a "
                          "dataset or another checkpoint)")
    imp.set_defaults(run=_import_hf)

    exp = subparsers.add_parser(
        "export-hf", help="write an slmkit checkpoint as a Hugging Face model directory",
        description="Write an slmkit checkpoint (or a run's best/last checkpoint) as config.json plus "
                    "model.safetensors that transformers.AutoModelForCausalLM.from_pretrained loads.",
    )
    exp.add_argument("ckpt", metavar="CKPT", help="an slmkit checkpoint or run directory")
    exp.add_argument("out", metavar="OUT", help="the Hugging Face model directory to write")
    exp.add_argument("--force", action="store_true",
                     help="replace OUT when it is empty or an earlier export-hf output (never the input run or "
                          "checkpoint, a folder around them, a dataset or another checkpoint)")
    exp.set_defaults(run=_export_hf)


def _import_hf(args) -> int:
    out = api.import_hf(args.hf_dir, args.out, overwrite=args.force)
    print(f"wrote slmkit checkpoint {out}")
    return 0


def _export_hf(args) -> int:
    out = api.export_hf(args.ckpt, args.out, overwrite=args.force)
    print(f"wrote Hugging Face model {out}")
    return 0
