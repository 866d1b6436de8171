"""Errors that mean the user's input is wrong (CLI exit code 2), not the program."""


class InputError(ValueError):
    """Bad input: the message is one line that names the file, line or key and the range."""
