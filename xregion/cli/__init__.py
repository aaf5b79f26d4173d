"""The `xregion` command line: the top layer, the only place (with the demo) where typer and rich appear."""
