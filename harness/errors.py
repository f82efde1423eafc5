"""Errors the CLI reports as one line with exit code 2."""


class UserError(ValueError):
    """Bad input from the user (a path, a spec, a parameter); the message is one clear line."""


def unknown_name(kind: str, name: str, known) -> UserError:
    """The UserError for a name not in a registry: the closest known one ("did you mean ...?") and the list."""
    import difflib

    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UserError(f"unknown {kind} {name!r}{hint} {kind.capitalize()}s: {', '.join(known) or '(none)'}")
