"""Layer 1: turn a prompt into features and a tier prior."""

from layers.classifier.base import CLASSIFIER_CLS, Classification, Classifier, build_classifier

__all__ = ["CLASSIFIER_CLS", "Classification", "Classifier", "build_classifier"]
