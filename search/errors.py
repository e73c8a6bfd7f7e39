"""The two ways a command fails: a usage error (``ValueError``: bad input, exit 2, nothing
written) or ``RunFailed`` (a run started and failed, e.g. its loss diverged: exit 1)."""


class RunFailed(Exception):
    """A run started and failed: exit code 1, not a usage error."""
