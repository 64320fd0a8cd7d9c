"""Command-line interface: a thin layer over the library API (one module per subcommand)."""
