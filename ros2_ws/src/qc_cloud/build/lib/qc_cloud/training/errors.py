"""Errors of the training tools. Each carries a message meant for the person running the command."""

from __future__ import annotations


class TrainingError(ValueError):
    """Base class: the command cannot go on; the message says why and what to do."""


class DatasetError(TrainingError):
    """The data set is missing, empty, one-class, unreadable, or does not match a recorded split."""


class ConfigError(TrainingError):
    """A training configuration value, weights file or checkpoint is invalid."""


class ExportError(TrainingError):
    """The exported model is malformed or does not reproduce the PyTorch outputs."""
