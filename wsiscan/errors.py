"""The wsiscan error tree.

Every error a user can cause derives from :class:`WsiscanError` and also from the
matching built-in exception, so callers can catch either.  Messages are one line:
they name the file, the problem and the fix.  Only ``wsiscan.cli`` turns these into
exit codes.
"""

from __future__ import annotations

__all__ = [
    "WsiscanError",
    "SlideOpenError",
    "SlideDecodeError",
    "SlideTooLargeError",
    "MissingMppError",
    "ResolutionError",
    "NoTissueError",
    "StoreExistsError",
    "StoreError",
    "RecordError",
    "OutputError",
    "SlideLockedError",
    "UnknownModelError",
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "OfflineError",
    "DatasetError",
    "DamagedChunkError",
    "WsiscanWarning",
    "UncheckedStoreWarning",
]


class WsiscanError(Exception):
    """Base class of every error wsiscan raises on purpose."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class SlideOpenError(WsiscanError, OSError):
    """The slide file is missing, unreadable, or not a format OpenSlide can tile."""


class SlideDecodeError(SlideOpenError):
    """Pixels of the slide (or one of its associated images) cannot be decoded: the file is damaged."""


class SlideTooLargeError(SlideOpenError):
    """The slide declares more pixels than any scanner makes, or than a whole-slide picture may hold."""


class MissingMppError(WsiscanError, ValueError):
    """The slide carries no usable resolution and none was given."""


class ResolutionError(WsiscanError, ValueError):
    """A resolution is implausible, or the slide cannot provide the one asked for."""


class NoTissueError(WsiscanError, ValueError):
    """Tissue detection found nothing to tile."""


class StoreExistsError(WsiscanError, FileExistsError):
    """An output already exists for another slide or configuration."""


class StoreError(WsiscanError, OSError):
    """A tile store or result folder is damaged or not a wsiscan store."""


class RecordError(StoreError, ValueError):
    """A result record (summary.json, manifest entry) is missing, unreadable or of an unknown shape."""


class OutputError(WsiscanError, OSError):
    """The output location cannot be written."""


class SlideLockedError(WsiscanError, BlockingIOError):
    """Another run holds the slide folder's lock (see :mod:`wsiscan.slide_lock`)."""


class UnknownModelError(WsiscanError, KeyError):
    """A model name is neither in the registry nor an existing checkpoint file."""


class CheckpointError(WsiscanError, ValueError):
    """A checkpoint file is corrupt or does not match what it claims to be."""


class ConfigError(WsiscanError, ValueError):
    """A configuration file or option value is invalid."""


class DeviceError(WsiscanError, RuntimeError):
    """The requested compute device is not available."""


class OfflineError(WsiscanError, ConnectionError):
    """Something must be downloaded but the network cannot be reached."""


class DatasetError(WsiscanError, ValueError):
    """A training or evaluation dataset is missing files or has the wrong shape."""


class DamagedChunkError(StoreError):
    """A chunk of a tile store array fails its checksum, cannot be decoded, or holds
    probabilities outside [0, 1]; the message names the array, the chunk and the fix."""


class WsiscanWarning(UserWarning):
    """Base class of the warnings wsiscan gives; the CLI prints each once, in one line."""


class UncheckedStoreWarning(WsiscanWarning):
    """A tile store was written without chunk checksums, so damage to it cannot be detected."""
