"""headstart: a folder of labelled photos in, a tested, exportable image classifier out."""

from headstart.core.errors import HeadstartError
from headstart.estimator.classifier import ImageClassifier, load
from headstart.estimator.finetune import FineTuneClassifier

__version__ = "0.1.0"
__all__ = ["ImageClassifier", "FineTuneClassifier", "load", "HeadstartError", "__version__"]
