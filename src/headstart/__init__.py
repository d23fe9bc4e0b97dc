"""headstart: a folder of labelled photos in, a tested, exportable image classifier out."""

from .classifier import ImageClassifier, load
from .errors import HeadstartError
from .finetune import FineTuneClassifier

__version__ = "0.1.0"
__all__ = ["ImageClassifier", "FineTuneClassifier", "load", "HeadstartError", "__version__"]
