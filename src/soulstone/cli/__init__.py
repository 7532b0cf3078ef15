"""The `soulstone` command line: typer commands and rich rendering."""
