"""Errors that carry a message meant for the user: what is wrong and how to fix it."""


class MimprobeError(Exception):
    """A failure the user can fix; the CLI prints it on one line and exits 1."""


class ConfigError(MimprobeError):
    """A config value is wrong; the message names the key."""


class DataError(MimprobeError):
    """An input file is missing, corrupt or inconsistent; the message names the file."""
