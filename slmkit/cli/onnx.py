"""`slm export-onnx`: an slmkit checkpoint as an ONNX model, with or without KV-cache inputs and outputs
(a thin call of `slmkit.api.export_onnx`)."""

from __future__ import annotations

from slmkit import api
from slmkit.cli.command import add_command


def register(subparsers) -> None:
    add_command(
        subparsers, "export-onnx", _export_onnx_arguments, _export_onnx,
        help="write an slmkit checkpoint as an ONNX model (onnxruntime, onnxruntime-genai)",
        description="Write an slmkit checkpoint (or a run's best/last checkpoint) as OUT/model.onnx in float32, "
                    "with KV-cache inputs and outputs (past_key_values.N.key/value -> present.N.key/value) unless "
                    "--no-cache, beside config.json, genai_config.json and the tokenizer files; --quantize int8 "
                    "writes it with int8 weights (onnxruntime's dynamic quantization), --quantize int4 with 4-bit "
                    "weights in blocks (onnxruntime's MatMulNBits). Needs the onnx extra: "
                    "pip install 'slmkit[onnx]'.",
    )


def _export_onnx_arguments(exp) -> None:
    exp.add_argument("ckpt", metavar="CKPT", help="an slmkit checkpoint or run directory")
    exp.add_argument("out", metavar="OUT", help="the ONNX model directory to write")
    exp.add_argument("--no-cache", dest="cache", action="store_false",
                     help="export input_ids -> logits only (every step reads the whole sequence)")
    exp.add_argument("--opset", type=int, default=None, metavar="N",
                     help="ONNX opset version, 18 to 23 (default: 20; int4: 21, the first with 4-bit tensors)")
    exp.add_argument("--quantize", default=None, metavar="DTYPE",
                     help="int8: weights in 8 bits by onnxruntime's quantize_dynamic, activations quantized on "
                          "the fly (about a third of the float32 file); int4: weights in 4 bits, one scale per "
                          "block, by onnxruntime's MatMulNBitsQuantizer (about a fifth; default: float32)")
    exp.add_argument("--block-size", type=int, default=None, metavar="N",
                     help="int4 only: weights per scale and zero point, 16, 32, 64, 128 or 256 (default: 32; "
                          "larger blocks decode faster and cost more accuracy)")
    exp.add_argument("--force", action="store_true",
                     help="replace OUT when it is empty or an earlier export-onnx output (never the input run or "
                          "checkpoint, a folder around them, a dataset or another checkpoint)")


def _export_onnx(args) -> int:
    out = api.export_onnx(args.ckpt, args.out, cache=args.cache, opset=args.opset, quantize=args.quantize,
                          block_size=args.block_size, overwrite=args.force)
    size = sum(path.stat().st_size for path in out.glob("model.onnx*"))  # model.onnx.data too, past 2 GB
    print(f"wrote ONNX model {out} ({args.quantize or 'float32'}, {size / 1e6:,.1f} MB, "
          f"{'with' if args.cache else 'without'} the KV cache)")
    return 0
