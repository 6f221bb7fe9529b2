"""The `medallion` command line: `engine.cli.main.main` is the command; each module holds one family of commands,
and `engine.cli.common` what they share."""
