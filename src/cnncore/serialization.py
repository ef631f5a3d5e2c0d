"""Save and load models (and training checkpoints) as a single ``.npz`` file.

File layout (format version 1), every entry a NumPy array, no pickle:

* ``__format__``: the string ``"cnncore-model"``; ``__version__``: the format version (int);
  ``__cnncore_version__``: the library version that wrote the file;
* ``__architecture__``: JSON of ``model.to_config()`` (each layer's class and ``get_config()``);
* ``param/<name>`` and ``buffer/<name>``: every parameter and buffer (BatchNorm running
  statistics), named as in ``model.named_parameters()``;
* ``__extra_state__``: JSON of non-array layer state (Dropout generators);
* optional ``__optimizer__`` (JSON config) and ``optimizer/<key>`` (its ``state_dict()``);
* optional ``__trainer__``: JSON of the Trainer's state (epoch counter, step counter, state of
  the shuffling generator, loss config), written by :meth:`cnncore.trainer.Trainer.save_checkpoint`.

Files are written atomically (a temporary file in the same directory, fsynced, then
:func:`os.replace` and an fsync of the directory; see :func:`atomic_savez`) and read with
``np.load(allow_pickle=False)``. Unreadable, corrupt or newer-format files raise
:class:`ValueError` naming the file and the problem.
"""

import json
import os
import re
import secrets
import socket
import zipfile

import numpy as np

from ._version import __version__
from .layers.base import layer_from_config, register_model_function

__all__ = ["FORMAT_VERSION", "save", "load", "load_checkpoint", "Checkpoint", "atomic_savez"]

FORMAT_VERSION = 1
_MAGIC = "cnncore-model"


def _json_array(obj):
    return np.array(json.dumps(obj, sort_keys=True))


def atomic_savez(path, arrays):
    """Write ``arrays`` (a dict of ndarrays) to ``path`` with :func:`numpy.savez` via a temporary
    file in the same directory and :func:`os.replace`: ``path`` either keeps its old content or
    gets the complete new one; no partial file is left behind when writing fails.

    The file is fsynced before the rename and its directory after it (POSIX), so that a power
    cut cannot leave an empty or missing file. The temporary name carries the writer's host
    and process id (``<name>.tmp.<host>.<pid>.<random>``): a writer killed mid-save (SIGKILL,
    power cut) leaves its temporary file behind, and the next save to ``path`` on the same
    host removes those whose process is gone, never a live writer's (POSIX only).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _tidy_dead_temp_files(directory, base)
    fd, tmp = _create_temp(directory, base)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _host_tag():
    """This host's name, reduced to the characters a temporary name may carry (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _create_temp(directory, base):
    """Create ``<base>.tmp.<host>.<pid>.<random>`` exclusively, with the usual file mode
    (0666 less the umask, like ``open``); return ``(fd, path)``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | \
        getattr(os, "O_BINARY", 0)
    prefix = f"{base}.tmp.{_host_tag()}.{os.getpid()}."
    for _ in range(100):
        tmp = os.path.join(directory, prefix + secrets.token_hex(4))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{os.path.join(directory, base)}: could not create a temporary "
                          "file (100 names taken)")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _tidy_dead_temp_files(directory, base):
    """Remove ``<base>.tmp.<host>.<pid>.<random>`` files left by dead writers on this host."""
    if os.name != "posix":  # os.kill(pid, 0) is not a liveness probe on Windows
        return
    prefix, host, me = base + ".tmp.", _host_tag(), os.getpid()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split(".")
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue  # another host's writer, or not one of our names: leave it
        pid = int(parts[1])
        if pid == me or _pid_alive(pid):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:  # already gone (another process tidied it) or not ours to remove
            pass


def _fsync_directory(directory):
    """Make the rename durable: fsync the directory (POSIX; a no-op where directories cannot
    be opened, e.g. Windows, or where the file system refuses it)."""
    if os.name != "posix":
        return
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _model_arrays(model):
    arrays = {
        "__format__": np.array(_MAGIC),
        "__version__": np.array(FORMAT_VERSION, dtype=np.int64),
        "__cnncore_version__": np.array(__version__),
        "__architecture__": _json_array(model.to_config()),
        "__extra_state__": _json_array(model.named_extra_states()),
    }
    for name, p in model.named_parameters():
        arrays["param/" + name] = p.data
    for name, b in model.named_buffers():
        arrays["buffer/" + name] = b
    return arrays


def save(path, model, optimizer=None, trainer_state=None):
    """Save ``model`` (architecture, parameters, buffers) to the ``.npz`` file ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Written as given (use a ``.npz`` suffix); replaced atomically if it exists.
    model : Layer
    optimizer : Optimizer, optional
        Also store its config and ``state_dict()`` (to resume training).
    trainer_state : dict, optional
        JSON-serialisable trainer state (used by ``Trainer.save_checkpoint``).
    """
    arrays = _model_arrays(model)
    if optimizer is not None:
        arrays["__optimizer__"] = _json_array(optimizer.to_config())
        for key, value in optimizer.state_dict().items():
            arrays["optimizer/" + key] = value
    if trainer_state is not None:
        arrays["__trainer__"] = _json_array(trainer_state)
    atomic_savez(path, arrays)


class Checkpoint:
    """Everything read from a file: ``model``, ``optimizer_config`` / ``optimizer_state``
    (None if not saved), ``trainer_state`` (None if not saved), ``format_version``."""

    def __init__(self, model, optimizer_config, optimizer_state, trainer_state, format_version):
        self.model = model
        self.optimizer_config = optimizer_config
        self.optimizer_state = optimizer_state
        self.trainer_state = trainer_state
        self.format_version = format_version

    def __repr__(self):
        return (f"Checkpoint(model={type(self.model).__name__}, optimizer="
                f"{None if self.optimizer_config is None else self.optimizer_config['class']}, "
                f"trainer_state={self.trainer_state is not None})")


def _read_arrays(path):
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{name}: no such file")
    try:
        f = np.load(name, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{name}: not a readable cnncore model file ({type(e).__name__}: {e})") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{name}: not a cnncore model file (a single .npy array, not an .npz "
                         "archive)")
    try:
        with f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # truncated / corrupt members surface here
        raise ValueError(f"{name}: corrupt cnncore model file ({type(e).__name__}: {e})") from e


def _text(arrays, key, name):
    try:
        value = arrays[key]
    except KeyError:
        raise ValueError(f"{name}: missing entry {key!r}; not a cnncore model file or "
                         "corrupt") from None
    if value.shape != () or value.dtype.kind != "U":
        raise ValueError(f"{name}: entry {key!r} should be a string, got {value.dtype} "
                         f"{value.shape}")
    return str(value[()])


def _json(arrays, key, name):
    try:
        return json.loads(_text(arrays, key, name))
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: entry {key!r} is not valid JSON ({e})") from e


def load_checkpoint(path):
    """Read a file written by :func:`save` (or ``Trainer.save_checkpoint``).

    Returns
    -------
    Checkpoint
        With the rebuilt model (in eval mode) and the optimiser / trainer state if present.

    Raises
    ------
    ValueError
        If the file is not a cnncore model file, is corrupt, comes from a newer format
        version, or does not match its own architecture.
    """
    name = os.fspath(path)
    arrays = _read_arrays(name)
    magic = arrays.get("__format__")
    if magic is None or magic.dtype.kind != "U" or str(magic[()]) != _MAGIC:
        raise ValueError(f"{name}: not a cnncore model file (no '__format__' = {_MAGIC!r} entry)")
    version = arrays.get("__version__")
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        raise ValueError(f"{name}: missing or invalid format version")
    version = int(version)
    if version > FORMAT_VERSION:
        written_by = arrays.get("__cnncore_version__")
        by = f" (written by cnncore {written_by[()]})" if written_by is not None else ""
        raise ValueError(f"{name}: file format version {version}{by} is newer than the versions "
                         f"this cnncore {__version__} reads (up to {FORMAT_VERSION}); "
                         "upgrade cnncore")
    if version < 1:
        raise ValueError(f"{name}: invalid format version {version}")
    arch = _json(arrays, "__architecture__", name)
    from . import zoo  # noqa: F401  (registers the zoo's layer classes; imported when needed)
    try:
        model = layer_from_config(arch)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{name}: cannot rebuild the architecture ({e})") from e
    state = {}
    for key, value in arrays.items():
        for prefix in ("param/", "buffer/"):
            if key.startswith(prefix):
                state[key[len(prefix):]] = value
    try:
        model.load_state_dict(state, where=name)
        model.load_extra_states(_json(arrays, "__extra_state__", name))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{name}: invalid layer state ({e})") from e
    model.eval()
    opt_config = opt_state = trainer_state = None
    if "__optimizer__" in arrays:
        opt_config = _json(arrays, "__optimizer__", name)
        opt_state = {k[len("optimizer/"):]: v for k, v in arrays.items()
                     if k.startswith("optimizer/")}
    if "__trainer__" in arrays:
        trainer_state = _json(arrays, "__trainer__", name)
    return Checkpoint(model, opt_config, opt_state, trainer_state, version)


def load(path):
    """Rebuild the model saved in ``path`` by :func:`save` / ``model.save``.

    The model is returned in eval mode (call ``model.train()`` to train it further); its
    predictions equal the saved model's exactly.
    """
    return load_checkpoint(path).model


register_model_function("save", save)
