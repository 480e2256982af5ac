"""`python -m runners.cli`: the `pipeplan` command line."""

from runners.cli.app import main

main()
