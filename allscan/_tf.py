"""Import TensorFlow quietly: a command-line tool must not print framework logs.

TensorFlow writes its oneDNN banner through absl before ``TF_CPP_MIN_LOG_LEVEL``
applies, so stderr is pointed at /dev/null for the duration of the import.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _quiet_import():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow
        import keras
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow, keras


tf, keras = _quiet_import()

__all__ = ["tf", "keras"]
