"""Anomaly detection methods behind one :class:`~vlmad.methods.base.Detector` contract."""

from vlmad.methods.base import Detector, DetectorInfo, Prediction
from vlmad.methods.registry import available_methods, create_detector

__all__ = ["Detector", "DetectorInfo", "Prediction", "available_methods", "create_detector"]
