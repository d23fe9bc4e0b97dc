"""Runs: a command's work from data in to files out, each file written once and atomically."""
