"""``python -m labelloop`` runs the CLI."""

from labelloop.cli import main

main()
