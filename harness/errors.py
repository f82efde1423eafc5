"""Errors the CLI reports as one line with exit code 2."""


class UserError(ValueError):
    """Bad input from the user (a path, a spec, a parameter); the message is one clear line."""
