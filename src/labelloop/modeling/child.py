"""One function run in a child Python process, so that what it loads (torch for the backbone's export, the
calibration session of an int8 build) is never resident in the serving and training process: its memory goes
back with the child. The child gets only strings on its command line; files carry anything larger."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

STDERR_TAIL = 2000  # characters of the child's stderr kept in the error: the traceback's end, which names the error


def run(target: str, *args: str, failure: str, env: dict[str, str] | None = None) -> None:
    """Call ``target`` ("package.module:function") with ``args`` in a child Python process (this interpreter, this
    environment plus ``env``) and wait for it. A child that fails raises ``ModelError`` saying ``failure``, then
    the child's own error (the end of its stderr) or the signal that ended it."""
    module, _, function = target.partition(":")
    if not module or not function.isidentifier():
        raise ValueError(f"a child's target is 'package.module:function', not {target!r}")
    code = f"import sys; from {module} import {function}; {function}(*sys.argv[1:])"
    finished = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False,
                              env=None if env is None else {**os.environ, **env})
    if finished.returncode != 0:
        from labelloop.modeling.versions import ModelError  # here: a child needs none of versions' database

        raise ModelError(f"{failure}: {why(finished.returncode, finished.stderr)}")


def why(returncode: int, stderr: str) -> str:
    """Why a child ended with ``returncode`` (negative: the signal that killed it), in words ending with what it
    wrote to ``stderr``."""
    said = stderr.strip()[-STDERR_TAIL:]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the child process was killed by {name}" + (f"; it had written: {said}" if said else "")
    return said or f"the child process exited with status {returncode} and wrote nothing to stderr"
