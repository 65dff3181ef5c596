"""One module per `distill` subcommand: ``add_arguments(parser)`` and ``run(args)``."""
