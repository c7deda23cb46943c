"""The conversion options `ctl import` and `ctl pull` share: those of the seeds' conversion script (mlx-lm's
convert): --quantize --q-bits 4|8 --q-group-size 32|64|128 --dtype float16|bfloat16."""

from protocol.store import ConvertOptions
from supervisor.model_pull import DTYPES, Q_BITS, Q_GROUP_SIZES


def add_convert_arguments(parser) -> None:
    parser.add_argument("--quantize", action="store_true", help="quantize the weights (mlx-lm's convert)")
    parser.add_argument("--q-bits", type=int, default=4, choices=Q_BITS, help="bits per weight (default 4)")
    parser.add_argument("--q-group-size", type=int, default=64, choices=Q_GROUP_SIZES, help="default 64")
    parser.add_argument("--dtype", choices=DTYPES, help="cast the unquantized weights (default: as saved)")


def convert_options(args) -> ConvertOptions:
    return ConvertOptions(quantize=args.quantize, q_bits=args.q_bits, q_group_size=args.q_group_size, dtype=args.dtype)
