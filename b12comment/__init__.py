"""b12comment: an interpretive comment on isolated elevated vitamin B12 in children."""

__version__ = "0.3.0"
