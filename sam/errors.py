"""The one exception type that means "the user asked for something wrong"."""


class UserError(Exception):
    """A bad config value, missing data or similar: the CLI prints the message
    on one line (problem and fix) and exits with status 2, no traceback."""
