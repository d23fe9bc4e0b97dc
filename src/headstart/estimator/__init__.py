"""The estimator: ImageClassifier (feature extraction or fine-tuning), load."""
