"""Exceptions raised by ember."""


class CudaError(RuntimeError):
    """A CUDA runtime call or kernel launch failed.

    The message names the call, the source file and line, and CUDA's error name and text.
    """


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match what is being loaded."""


__all__ = ["CudaError", "CheckpointError"]
