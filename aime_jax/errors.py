"""Errors caused by user input: the command-line entry points print their message, no traceback."""
import contextlib
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from absl import flags


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


_HELP = re.compile(r"--?(help|helpshort|helpfull|helpxml|h|\?)")


def parse_command_line(argv: list[str], flag_values: "flags.FlagValues") -> list[str]:
    """absl's flag parser for the entry points (`app.run(main, flags_parser=...)`), with every
    bad flag (a value out of its bounds, an unknown config key, a wrong type, a config file's own
    refusal such as an unknown `:argument`) as one line and exit 1."""
    from absl import flags

    try:
        return flag_values(argv)
    except SystemExit as e:
        # absl's --help, --helpshort and --helpfull print the usage and exit 1; asking for help
        # is not an error.
        if e.code == 1 and any(_HELP.fullmatch(a) for a in argv[1:]):
            sys.exit(0)
        raise
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, AimeError) as e:
        message = str(e)
        hint = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', message)
        if hint:
            message = f"unknown config key {hint.group(2)!r} (did you mean {hint.group(1)!r}?)"
        elif isinstance(e, (AttributeError, KeyError)):
            message = f"unknown config key {message}"
        sys.exit(f"error: bad command line: {message}")
