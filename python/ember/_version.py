"""ember's version: at the bottom of the import graph, so any module can name it without
importing the package (``ember/__init__`` imports nearly everything)."""
__version__ = "0.1.0"
