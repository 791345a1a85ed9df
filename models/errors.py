"""The base of every user-facing loraflow error: its message is one line naming what and where."""


class LoraflowError(Exception):
    """A problem the user can fix (bad config, data, model, unreachable service)."""
