"""Training kwspot models: data, augmentation, architectures, export.

Only :mod:`kwspot.train.models`, :mod:`kwspot.train.loop` and
:mod:`kwspot.train.export` need TensorFlow, and they import it lazily
through :func:`require_tensorflow`; the data modules are numpy only, so
``kwspot evaluate`` can use them without TensorFlow installed.
"""

from __future__ import annotations

from typing import Any

from kwspot.errors import KwspotError


def require_tensorflow() -> Any:
    """Import TensorFlow or explain how to get it."""
    try:
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
    except ImportError:
        raise KwspotError("kwspot train needs TensorFlow: pip install 'kwspot[train]'") from None
    return tf
