"""`python -m jetl ...` is the `jetl` command."""

from jetl.cli import main

main()
