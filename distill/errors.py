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
