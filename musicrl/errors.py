"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from a person (a path, a flag, a file's contents): said in one line, no traceback."""
