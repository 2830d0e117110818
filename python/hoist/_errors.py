"""Exceptions raised by hoist. Every message names the file and, where known, the tensor."""


class HoistError(Exception):
    """Base class of every error hoist raises."""


class CheckpointError(HoistError, ValueError):
    """The checkpoint is malformed: truncated file, bad header, missing shard, lying offsets..."""


class HoistIOError(HoistError, OSError):
    """A file could not be opened or read, or memory for the tensors could not be had."""


class DeviceError(HoistError, RuntimeError):
    """The requested device cannot be used (no GPU, no CUDA driver, bad ordinal, ...)."""


class SelectionError(HoistError, LookupError):
    """A filter glob or a tensor name matched nothing in the checkpoint."""
