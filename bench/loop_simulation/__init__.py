"""The end-to-end improvement simulation: `.venv/bin/python -m bench.loop_simulation` (see run.py)."""
