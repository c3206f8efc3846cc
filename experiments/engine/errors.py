"""User-facing errors and warnings: one line each, naming the culprit and the fix."""
import sys


class UserError(Exception):
    """Bad input from the user (config, files). Printed as `error: <message>` without a traceback."""


class RunFailed(Exception):
    """A run that started but could not finish (NaN loss, diverged); recorded with status `failed`."""


class WriteError(OSError):
    """A results, checkpoint or claim file could not be written (full disk, permissions); `filename` names it."""


def warn(message: str) -> None:
    """One `warning:` line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
