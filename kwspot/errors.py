"""The one exception type that the command line turns into a one-line error."""


class KwspotError(Exception):
    """A problem with the user's input (file, config, model, device, socket).

    The message names the culprit; the command line prints it on one line
    and exits with status 2, never with a traceback.
    """
