"""Errors a user can fix. The CLI prints their message (what is wrong, how to fix it) and exits 2."""


class UserError(Exception):
    """A problem with the user's input, environment or configuration; the message says how to fix it."""
