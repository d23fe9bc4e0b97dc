"""Images on disk: discovery, splits, exclusions, decoding, augmentation, downloadable data sets."""
