"""The one exception type for mistakes in a user's input (paths, data, configuration)."""


class BarlowTwinsError(Exception):
    """A problem with what the user asked for. The message names the problem and the fix.

    The command-line tool prints it as a single line and exits with status 2; anything else that goes
    wrong is a bug and keeps its traceback.
    """


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, or SLURM's warning signal) and saved a checkpoint first.

    The command-line tool prints the message and exits with ``128 + signal`` (143 for SIGTERM), the status
    of a process the signal ended, so schedulers treat it as preempted rather than failed.
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_status = 128 + signal_number
