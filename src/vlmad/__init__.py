"""vlmad: zero- and few-shot industrial anomaly detection with vision-language models.

>>> import vlmad
>>> det = vlmad.create_detector("winclip", checkpoint="vit_b_16_plus_240.safetensors")  # doctest: +SKIP
"""

from vlmad.errors import VlmadError
from vlmad.methods import Detector, Prediction, available_methods, create_detector

__version__ = "0.1.0"
__all__ = ["Detector", "Prediction", "VlmadError", "__version__", "available_methods", "create_detector"]
