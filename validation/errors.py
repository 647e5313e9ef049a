"""The one error type the command line turns into a single line on stderr and exit status 2."""


class UsageError(Exception):
    """Bad input: the message names what is wrong and what would be accepted."""
