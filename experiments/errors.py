"""User-facing errors: one line, names the culprit and the fix."""


class UserError(Exception):
    """Bad input from the user (config, files). Printed as `error: <message>` without a traceback."""


class RunFailed(Exception):
    """A run that started but could not finish (NaN loss, diverged); recorded with status `failed`."""
