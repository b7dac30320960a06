"""The benchmark scripts take config overrides as experiments/main.py does: `--config.a.b=value`.

argparse cannot declare an open set of dotted options, so each script parses its own options with
`parse_known_args` and hands what is left to `config_overrides`, which accepts only overrides and
says in one line what it could not use.
"""
import ast
import sys

PREFIX = "--config."


def config_overrides(rest: list[str], allowed: str = "") -> list[str]:
    """The `--config.key=value` items of `rest`, checked: each has a value, and its key starts with
    `allowed` (e.g. "world_model." where a script builds only the world model). Exits with one line
    naming the first item it cannot use."""
    out = []
    for item in rest:
        key, sep, _ = item.partition("=")
        if not item.startswith(PREFIX) or not sep or len(key) <= len(PREFIX):
            sys.exit(f"error: unrecognised argument {item!r}; config overrides take the form "
                     f"--config.{allowed + 'key' if allowed else 'a.b'}=value, as in experiments/main.py")
        if not key[len(PREFIX):].startswith(allowed):
            sys.exit(f"error: {key} cannot be set here; this benchmark takes --config.{allowed}* overrides only")
        out.append(item)
    return out


def as_dict(overrides: list[str], strip: str = "") -> dict:
    """["--config.world_model.x=1"] -> {"x": 1} (with strip="world_model."): values read as Python
    literals where they parse as one (true/false too), as strings otherwise."""
    out = {}
    for item in overrides:
        key, _, value = item[len(PREFIX):].partition("=")
        value = {"true": "True", "false": "False"}.get(value.lower(), value)
        try:
            out[key[len(strip):]] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key[len(strip):]] = value
    return out
