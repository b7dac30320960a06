"""Runs the project's command-line programs for the tests, each in a fork of this warm process.

Most command-line tests start a program only to see it refuse a bad command in one line; each
such start used to pay a fresh interpreter and the import of JAX, Flax, Orbax and the project
(seconds on 2 cores), several times over the ~5 s the check itself takes. This server imports
them once, then for every request forks a child that runs the program as `python PROGRAM ARGS`
would: `__main__`, its own sys.argv and sys.path[0], working directory and environment, stdout
and stderr to files, the exit status of `sys.exit` (a message to stderr and status 1) or of an
uncaught exception (its traceback, status 1). Nothing here initialises a JAX backend, so each
child starts its own with the environment it was given (XLA_FLAGS included).

Protocol (tests/support.py `run_cli`): one JSON request per line on stdin, {"argv", "cwd", "env",
"stdout", "stderr"} (the last two: file paths); one JSON line back per request, {"rc"}; a
negative rc is the signal that ended the child, as in subprocess.
"""
import json
import os
import runpy
import sys
import traceback
import warnings

# What the programs import before they do anything: loaded once here, shared by every fork.
import absl.app  # noqa: F401
import absl.flags  # noqa: F401
import flax.linen  # noqa: F401
import jax  # noqa: F401
import jax.numpy  # noqa: F401
import ml_collections.config_flags  # noqa: F401
import numpy  # noqa: F401
import optax  # noqa: F401
import orbax.checkpoint  # noqa: F401

import aime_jax.config  # noqa: F401
import aime_jax.errors  # noqa: F401
import aime_jax.stages  # noqa: F401

# numpy's BLAS threads wait idle in this process; the children never use the parent's.
warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)


def run_child(request: dict) -> None:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((0, os.devnull), (1, request["stdout"]), (2, request["stderr"])):
        handle = os.open(path, os.O_RDONLY) if fd == 0 else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.orig_argv = [sys.executable, *sys.argv]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, then status 1
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            run_child(request)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
