"""One module per `qc_cloud` subcommand; each defines register(subparsers) and sets args.func."""
