"""Import a model into the model store: a GGUF file (Q4_0/Q4_1/Q8_0 as they are; K-quants such as Q4_K_M,
Q5_K, Q6_K, Q2_K/Q3_K, IQ4_NL dequantized and quantized again with MLX), a Hugging Face safetensors directory, or
`bundled:<name>` for a model shipped as a Python package. Works without a running supervisor."""

import os
from pathlib import Path

from supervisor.bundled import BUNDLED
from supervisor.ctl.convert_options import add_convert_arguments, convert_options
from supervisor.model_import import ModelImportError, import_model


def add_arguments(parser) -> None:
    parser.add_argument("source", help=f"a .gguf file, a safetensors directory, or bundled:NAME ({', '.join(BUNDLED)})")
    parser.add_argument("name", nargs="?", help="directory name in the store (default: the bundled name)")
    parser.add_argument(
        "--store",
        default=os.environ.get("MLX_MODEL_STORE", "models"),
        help="model store directory (default: $MLX_MODEL_STORE or ./models)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing model of that name")
    # A safetensors directory: mlx-lm's convert. A GGUF file: --q-group-size for the types MLX cannot load as they
    # are (K-quants, at their nearest bits), --quantize --q-bits N to quantize every tensor again at N bits.
    add_convert_arguments(parser)


def run(client, args, out) -> int:
    name = args.name or (args.source.removeprefix("bundled:") if args.source.startswith("bundled:") else None)
    if not name:
        print("error: give a NAME for the imported model", file=out)
        return 2
    try:
        dst = import_model(args.source, name, Path(args.store), force=args.force, convert=convert_options(args))
    except ModelImportError as exc:
        print(f"error: {exc}", file=out)
        return 1
    print(f"imported {args.source} as {name} into {dst}", file=out)
    return 0
