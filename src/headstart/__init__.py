"""headstart: a folder of labelled photos in, a tested, exportable image classifier out.

The estimator (and with it scikit-learn and torch, seconds of imports) loads on first use of
``headstart.ImageClassifier``, ``FineTuneClassifier`` or ``load``: a process that needs one
module (a feature-cache writer, a worker) imports only what that module does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headstart.core.errors import HeadstartError, ParameterError

if TYPE_CHECKING:
    from headstart.estimator.classifier import FineTuneClassifier, ImageClassifier, load

__version__ = "0.1.0"
__all__ = ["ImageClassifier", "FineTuneClassifier", "load", "HeadstartError", "ParameterError", "__version__"]
_ESTIMATOR = ("ImageClassifier", "FineTuneClassifier", "load")


def __getattr__(name: str) -> object:
    if name in _ESTIMATOR:
        from headstart.estimator import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_ESTIMATOR})
