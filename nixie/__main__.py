"""Let `python -m nixie` run the CLI."""

from nixie.cli import main

main()
