"""kwspot: a real-time keyword spotter for ten spoken commands."""

__version__ = "0.1.0"

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
LABELS = (SILENCE, UNKNOWN, *KEYWORDS)
