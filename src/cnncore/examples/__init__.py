"""Runnable examples: ``python -m cnncore.examples.<name>``."""
