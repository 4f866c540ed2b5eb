"""kwspot: a real-time keyword spotter. The words it hears come from its model's sidecar."""

__version__ = "0.1.0"

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")  # `kwspot train` default
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
LABELS = (SILENCE, UNKNOWN, *KEYWORDS)  # the classes of a default-trained model, such as the bundled one
MIN_RATE, MAX_RATE = 1000, 384000  # sample rates kwspot takes in, from any source (Hz)
