"""Errors that stop a run with one line for the user (no traceback): bad config, data, checkpoint or training."""


class UserError(Exception):
    """Base: the message names the key, file, sample or step at fault."""


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
