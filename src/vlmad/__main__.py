"""`python -m vlmad` = the `vlmad` command."""

from vlmad.cli import main

main()
