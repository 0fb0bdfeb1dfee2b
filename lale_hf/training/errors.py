"""Typed errors of training: scripts turn them into a message and exit code 2."""


class TrainingError(ValueError):
    """A training run cannot start or continue as asked; the message says what to change."""


class TrainingDataError(TrainingError):
    """A dataset lacks a split, a column, its class names, or holds labels outside the class range."""
