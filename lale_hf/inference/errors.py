"""The error prediction and export raise for bad input, bad settings or a model they cannot use."""


class InferenceError(ValueError):
    """An input, a setting or a model that prediction cannot use; the message names it and what was expected.

    Missing files and existing outputs raise the standard `FileNotFoundError`, `IsADirectoryError` and
    `FileExistsError` instead; a missing optional extra raises `ImportError` with the install command.
    """


__all__ = ["InferenceError"]
