"""User-facing errors.

Anything the user can fix (bad media, missing file, wrong config) raises an `AvmdvaeError` whose
message is one line saying what is wrong and what to do. The CLI prints it without a traceback and
exits non-zero; batch jobs catch it per item, record the reason and move on.
"""


class AvmdvaeError(Exception):
    """An error caused by the user's input, with a one-line message that says how to fix it."""


class MediaError(AvmdvaeError):
    """A media file cannot be read or lacks what is needed (no audio, no video, too short...)."""


class NoFaceError(AvmdvaeError):
    """No face was found in a clip."""


class CorpusError(AvmdvaeError):
    """A corpus is missing, incomplete, or was made with other preprocessing parameters."""


class ConfigError(AvmdvaeError):
    """A configuration or checkpoint does not match what is expected."""
