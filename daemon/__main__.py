"""`python -m daemon` is the `fnspool` command."""

from daemon.cli import main

main()
