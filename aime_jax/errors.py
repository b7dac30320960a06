"""Errors caused by user input: the command-line entry points print their message, no traceback."""
import contextlib
import sys


class AimeError(Exception):
    """Bad input (a name, a path, a dataset, a config); the message names the problem and the fix."""


class DatasetError(AimeError):
    """A dataset folder or episode file that cannot be used as it is."""


class ConfigError(AimeError):
    """A configuration value that is unknown, of the wrong type or inconsistent."""


class Interrupted(AimeError):
    """Ctrl-C during training: the run stops where it is, its checkpoints intact."""


@contextlib.contextmanager
def one_line(interrupted: str = "rerun the same command to continue"):
    """For the entry points: bad input and Ctrl-C end the program with one line, not a traceback."""
    try:
        yield
    except Interrupted as e:
        sys.exit(f"interrupted: {e}")
    except AimeError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: {interrupted}")
