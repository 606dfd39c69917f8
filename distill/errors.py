"""Errors that stop a run with one line for the user (no traceback): bad config, data, checkpoint or training."""


class UserError(Exception):
    """Base: the message names the key, file, sample or step at fault. One raised in a DataLoader worker is raised
    again by torch as "Caught NAME in DataLoader worker process N.\nOriginal Traceback ...\nmodule.NAME: message":
    it keeps its own one-line message."""

    def __init__(self, *args):
        text = args[0] if len(args) == 1 and isinstance(args[0], str) else ""
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:
            last = text.rstrip().splitlines()[-1]
            args = (last.split(": ", 1)[1] if ": " in last else last,)
        super().__init__(*args)


class ConfigError(UserError, ValueError):
    pass


class DataError(UserError, ValueError):
    pass


class CheckpointError(UserError, RuntimeError):
    pass


class TrainingError(UserError, RuntimeError):
    pass


class Stopped(UserError):
    """SIGTERM (preemption): a checkpoint was saved and the run stopped; rerunning the command resumes it."""
    exit_code = 143  # 128 + SIGTERM, as a shell reports a process ended by that signal
