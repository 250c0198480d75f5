"""The package version, importable from every area (edge/ and projections/ must not import
the package root ``hivebus``)."""

__version__ = "0.1.0"
