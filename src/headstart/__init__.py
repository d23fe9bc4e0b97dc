"""headstart: a folder of labelled photos in, a tested, exportable image classifier out."""

from headstart.core.errors import HeadstartError, ParameterError
from headstart.estimator.classifier import FineTuneClassifier, ImageClassifier, load

__version__ = "0.1.0"
__all__ = ["ImageClassifier", "FineTuneClassifier", "load", "HeadstartError", "ParameterError", "__version__"]
