"""`python -m trainsup …`, the same as the `trainsup` command (for environments without the script)."""

from trainsup.cli import main

main()
