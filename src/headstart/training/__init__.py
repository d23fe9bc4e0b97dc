"""Fine-tuning: the epoch loop, its callbacks and checkpoints."""
