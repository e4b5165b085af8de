"""bodycomp workers: the analysis (volume loading, L3, tissues, metrics) and DICOM encoders as
plain libraries, plus the Celery app and thin tasks that call them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bodycomp")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
