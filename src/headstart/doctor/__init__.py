"""The data doctor: bad files, duplicates, likely wrong labels, imbalance."""
