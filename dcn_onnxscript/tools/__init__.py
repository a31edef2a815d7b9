"""The command-line tools: ``demo`` and ``bench``."""
