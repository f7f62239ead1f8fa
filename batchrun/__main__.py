"""`python -m batchrun` runs the CLI."""

from batchrun.cli import main

main()
