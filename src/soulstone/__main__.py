"""`python -m soulstone`: the same as the `soulstone` command."""

from soulstone.cli.app import main

main()
