"""assigndet: object detectors defined by how they assign labels."""

__version__ = "0.1.0"
