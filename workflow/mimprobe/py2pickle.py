"""Write pickles the way Python 2 wrote the CIFAR archives: every str and bytes as a Python 2 `str`.

Python 2's protocol-2 pickles store strings with SHORT_BINSTRING/BINSTRING opcodes, which Python 3
decodes only when told an encoding (`bytes` or `latin1`); the default load fails. numpy arrays are
reconstructed through `numpy.core.multiarray._reconstruct`, the name Python 2's numpy wrote.
"""

from __future__ import annotations

import io
import pickle
import struct


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table we can extend
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):  # numpy 2's private name; Python 2's numpy wrote numpy.core
            qualname = name or obj.__qualname__
            module = module.replace("numpy._core", "numpy.core", 1)
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type(print)] = save_global  # builtin functions such as _reconstruct


def dumps_py2(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()
