"""`python -m engine.cli`: the `medallion` command."""

from engine.cli.main import main

main()
