"""capcli's one sentence for a file ``torch.load(weights_only=True)`` refused.

"unsafe" only for a file that asks to import something a checkpoint never needs (that is how a
pickle runs code), "truncated or corrupt" for a file PyTorch cannot parse, "not a capcli
checkpoint" for a valid PyTorch or pickle file that capcli did not write. The pickle is scanned
without importing or calling anything; PyTorch's own messages run to paragraphs and are never shown.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile

import torch

from capcli.runtime.torch_compat import weights_only_allowed
from capcli.safeio import open_regular

# "GLOBAL posix.system whose module posix is blocked", "GLOBAL __main__.Some was not an allowed global"
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*\.[A-Za-z_]\w*)\b")
_SCAN_LIMIT = 1 << 20  # bytes of pickle scanned for the globals it names (bounds the scan's memory)


def load_failure(path: str, exc: Exception) -> str:
    """capcli's sentence for a file ``torch.load(weights_only=True)`` refused with ``exc``."""
    names, plain = _scan_pickle(path)
    unsafe = _named_global(exc) or next((name for name in names if not _allowed(name)), None)
    if unsafe:
        return (f"refused to load: unsafe file, it asks to import {unsafe}, which would run code "
                "(a capcli checkpoint holds only weights and plain data)")
    text = str(exc)
    if "TorchScript" in text:
        return "not a capcli checkpoint (a TorchScript archive; give a checkpoint written by capcli train)"
    if os.path.getsize(path) == 0:
        return "truncated or corrupt checkpoint (the file is empty); copy or save it again"
    if plain or "Invalid magic number" in text:
        return "not a capcli checkpoint (a pickle file, not one written by torch.save)"
    ends_early = isinstance(exc, EOFError) or "central directory" in text
    why = "it ends too early" if ends_early else "PyTorch cannot parse it"
    return f"truncated or corrupt checkpoint ({why}); copy or save it again"


def _named_global(exc: Exception) -> str | None:
    """The disallowed global (``posix.system``) the weights-only unpickler stopped at, if any."""
    found = _GLOBAL_IN_MESSAGE.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
    return found.group(1) if found else None


class _Stub:
    """Stands in for every global while scanning: accepts any construction, holds nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        pass

    def append(self, item) -> None:
        pass

    def extend(self, items) -> None:
        pass


class _GlobalsScan(pickle.Unpickler):
    """Lists the globals a pickle names; ``find_class`` imports nothing, so nothing runs."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.names: list[str] = []

    def find_class(self, module: str, name: str) -> type:
        self.names.append(f"{module}.{name}")
        return _Stub

    def persistent_load(self, pid) -> _Stub:
        return _Stub()


def _scan_pickle(path: str) -> tuple[list[str], bool]:
    """The globals the file's pickle names (up to where it stops parsing), and whether the file is
    one complete pickle of something other than a PyTorch file.

    The weights-only unpickler names the first disallowed global itself, but stops earlier on a
    pickle protocol it does not read (``pickle.dump`` writes protocol 4 or 5); this scan sees
    the globals of such a file without importing or calling anything.
    """
    try:
        with open_regular(path) as file:  # a FIFO swapped in since the load is refused, not waited on
            is_zip = zipfile.is_zipfile(file)
            file.seek(0)
            if is_zip:  # torch.save's format: the pickle is */data.pkl
                with zipfile.ZipFile(file) as archive:
                    inner = [n for n in archive.namelist() if n.endswith("data.pkl")]
                    if not inner:
                        return [], False
                    with archive.open(inner[0]) as f:
                        scan = _GlobalsScan(f.read(_SCAN_LIMIT))
            else:
                scan = _GlobalsScan(file.read(_SCAN_LIMIT))
    except Exception:  # noqa: BLE001 - any unreadable archive (zlib, lzma, zip errors): nothing to scan
        return [], False
    try:
        value = scan.load()
    except Exception:  # noqa: BLE001 - garbage stops the scan; the names found so far still count
        return scan.names, False
    legacy_torch = value == torch.serialization.MAGIC_NUMBER  # the first of a legacy file's pickles
    return scan.names, not (is_zip or legacy_torch)


def _allowed(name: str) -> bool:
    """Whether ``weights_only=True`` would accept the global ``name``."""
    allowed = weights_only_allowed(name)
    if allowed is None:  # a torch that does not say: trust torch's own namespaces
        return name.startswith("torch.") or name in ("collections.OrderedDict", "builtins.set")
    if allowed:
        return True
    for entry in getattr(torch.serialization, "get_safe_globals", list)():
        obj = entry[0] if isinstance(entry, tuple) else entry
        given = entry[1] if isinstance(entry, tuple) else None
        if name in (given, f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"):
            return True
    return False
