"""``headstart review RUN``: a local web app to go through what a run got wrong, image by image.

``run`` reads the run folder (its model, split and data root) and what the model says of every
image; ``queues`` orders the images worth a look (likely wrong labels, confident errors,
duplicates, turned down or unsure); ``decisions`` keeps every decision in ``RUN/corrections.csv``
(the format ``train --corrections`` reads); ``photos`` serves the run's own images and cached
thumbnails; ``app`` is the FastAPI app around them. Nothing here writes into the data folder.
"""

from headstart.review.app import create_review_app
from headstart.review.run import ReviewRun, load_review_run

__all__ = ["ReviewRun", "create_review_app", "load_review_run"]
