"""The base of every user-facing loraflow error: its message is one line naming what and where."""


class LoraflowError(Exception):
    """A problem the user can fix (bad config, data, model, unreachable service).

    retryable: whether trying the same thing again later can succeed (a server that is down),
    as opposed to input that is wrong (a bucket or model that does not exist).
    """

    retryable = False
