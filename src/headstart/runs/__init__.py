"""Whole runs: the steps of a command (discover, extract, compute, write the run folder) in order."""
