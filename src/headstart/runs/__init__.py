"""The run folder: what ``train`` and ``evaluate`` leave behind, written by one RunWriter."""
