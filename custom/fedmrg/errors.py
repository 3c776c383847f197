"""User-facing errors.

Anything a user or a site can cause (a bad file, a bad config key) raises a subclass of
:class:`FedMRGError` whose message names the file or key and the reason. The CLI prints it on one
line and exits with status 2, without a traceback.
"""


class FedMRGError(Exception):
    """An error caused by input (files, configs, arguments), not by a bug."""


class ConfigError(FedMRGError):
    """A config file or value is invalid."""


class DataError(FedMRGError):
    """A data file (archive, report, image, annotation) is missing or unusable."""
