"""The command line: `main` parses the subcommand and calls one stage; each subcommand module only turns
arguments into a call."""

from camcaffe.cli.main import EXIT_INTERNAL, EXIT_INTERRUPTED, build_parser, main

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "build_parser", "main"]
