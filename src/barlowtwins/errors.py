"""The one exception type for mistakes in a user's input (paths, data, configuration)."""


class BarlowTwinsError(Exception):
    """A problem with what the user asked for. The message names the problem and the fix.

    The command-line tool prints it as a single line and exits with status 2; anything else that goes
    wrong is a bug and keeps its traceback.
    """
