"""The release number, in a module of its own so that library code never imports the package's ``__init__``."""

__version__ = "0.1.0"
