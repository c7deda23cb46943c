"""Make a CURVE key pair for a fleet: a host's (its supervisor and workers serve with it) or a client's (a
gateway or an operator calls the hosts with it). Writes NAME.key (the public key, for the config's `hosts` or
`host_clients`) and NAME.key_secret (0600: a host's $MLX_HOST_KEY, a client's $MLX_FLEET_KEY); prints the public
key and the two paths, never the secret. Works without a running supervisor."""

from protocol.curve import make_key_pair, public_key


def add_arguments(parser) -> None:
    parser.add_argument("directory", help="where to write the two files (created if missing)")
    parser.add_argument("name", help="the host's name (as in the config's hosts) or the client's, e.g. gateway")


def run(client, args, out) -> int:
    try:
        public, secret = make_key_pair(args.directory, args.name)
    except (FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=out)
        return 1
    print(f"public key {public_key(str(public)).decode()}", file=out)
    print(f"wrote {public} (public) and {secret} (secret, mode 0600)", file=out)
    return 0
