"""alexnet: the reference implementation of Krizhevsky, Sutskever & Hinton (NIPS 2012)."""

__version__ = "0.1.0"
# Where the code is published (pyproject.toml's [project.urls] Source): model cards' install line.
SOURCE_URL = "https://github.com/OWNER/alexnet"
