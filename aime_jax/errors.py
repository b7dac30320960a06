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


def required_config(flag_values: "flags.FlagValues", example: str):
    """The config of an entry point's --config flag, loaded now: a file ml_collections cannot
    load, or no --config at all, ends the program with one line (`example`: a --config value)."""
    try:
        config = flag_values.config
        if config is not None:
            config.keys()  # the config file is loaded lazily: fail here, not later
    except OSError as e:  # ml_collections reports a config file it could not load this way
        # Its message lists every path it tried, one per line; the last line says why.
        reason = str(e).strip().splitlines()[-1].strip()
        sys.exit(f"error: --config could not be loaded: {reason}")
    if config is None:
        sys.exit(f"error: --config is required, e.g. --config={example}")
    return config
