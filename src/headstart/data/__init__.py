"""Images on disk: discovery, splits, exclusions, decoding, augmentation, downloadable data sets.

``discovery`` finds labelled images, ``splits`` divides them, ``exclusions`` leaves listed files
out, ``download`` fetches example data; ``images`` decodes and ``augment`` transforms pixels.
"""
