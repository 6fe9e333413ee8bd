"""Errors the analysis tools report to the user as one line (no traceback)."""


class AnalysisInputError(ValueError):
    """A user input (folder, option, checkpoint) cannot be used; the message names the fix."""


class LayerIndexError(AnalysisInputError, IndexError):
    """A requested attention layer does not exist in the model."""
