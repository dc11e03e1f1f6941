"""`slm quantize`: a thin call of slmkit.api.quantize_checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from slmkit import api
from slmkit.cli.command import add_command


def register(subparsers) -> None:
    add_command(
        subparsers, "quantize", _quantize_arguments, _quantize,
        help="write an int8 or int4 copy of a checkpoint that decodes faster on the CPU",
        description="Quantize the Linear layers inside the blocks (attention qkv and out, MLP up, gate and down) "
                    "of a float checkpoint; embeddings, norms and (unless --head) the output head stay float. "
                    "OUT is a checkpoint that slm generate, chat and eval take like any other. See "
                    "docs/quantization.md.")


def _quantize_arguments(quantize) -> None:
    quantize.add_argument("ckpt", metavar="CKPT", help="a float checkpoint, or a run (its best, else last)")
    quantize.add_argument("out", metavar="OUT", help="the directory to write")
    quantize.add_argument("--to", choices=("int8", "int4"), default="int8",
                          help="int8: per output channel; int4: per group of --group-size inputs (default int8)")
    quantize.add_argument("--mode", choices=("weight", "dynamic"), default="weight",
                          help="weight: weight-only (bfloat16 activations); dynamic: int8 activations too, "
                               "int8 only (default weight)")
    quantize.add_argument("--group-size", type=int, default=64, metavar="N",
                          help="int4 group size: 32, 64, 128 or 256 input columns per scale (default 64)")
    quantize.add_argument("--head", action="store_true",
                          help="quantize the output head too (half the weights of a small model with a large "
                               "vocabulary; the largest speed-up, a little more error)")
    quantize.add_argument("--force", action="store_true",
                          help="replace OUT when it is empty or an earlier slm quantize output (never the input)")


def _quantize(args) -> int:
    out = Path(api.quantize_checkpoint(args.ckpt, args.out, to=args.to, mode=args.mode, group_size=args.group_size,
                                       quantize_head=args.head, overwrite=args.force))
    record = json.loads((out / "config.json").read_text())["quantization"]
    source_bytes = (Path(record["source"]) / "model.safetensors").stat().st_size
    out_bytes = (out / "model.safetensors").stat().st_size
    group = f", group size {record['group_size']}" if record["group_size"] else ""
    print(f"wrote {out}: {record['scheme']}{group}, {len(record['layers'])} layers quantized"
          f"{' (with the output head)' if record['head'] else ''}; weights {out_bytes / 1e6:.1f} MB "
          f"(float {source_bytes / 1e6:.1f} MB)")
    return 0
