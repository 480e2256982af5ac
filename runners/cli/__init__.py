"""The `pipeplan` command line (`app`): the one layer allowed to import every package."""
