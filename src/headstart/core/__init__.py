"""Lowest layer: errors, settings validation, CPUs and threads, atomic file writes, progress. Imports nothing of headstart."""
