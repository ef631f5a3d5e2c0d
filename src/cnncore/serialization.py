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

from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ._typing import Array, Config, ConfigValue
from ._version import __version__
from .layers.base import layer_from_config, register_model_function

if TYPE_CHECKING:
    from .layers.base import Layer
    from .optim import Optimizer

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["FORMAT_VERSION", "save", "load", "load_checkpoint", "Checkpoint", "atomic_savez"]

FORMAT_VERSION = 1
_MAGIC = "cnncore-model"


def _json_array(obj: ConfigValue) -> Array:
    return np.array(json.dumps(obj, sort_keys=True))


def atomic_savez(path: PathLike, arrays: Mapping[str, Array]) -> None:
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
            np.savez(f, **arrays)  # type: ignore[arg-type]  # (numpy stubs: allow_pickle)
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


def _host_tag() -> str:
    """This host's name, reduced to the characters a temporary name may carry (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _create_temp(directory: str, base: str) -> Tuple[int, str]:
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _tidy_dead_temp_files(directory: str, base: str) -> None:
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


def _fsync_directory(directory: str) -> None:
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


def _model_arrays(model: "Layer") -> Dict[str, Array]:
    arrays: Dict[str, Array] = {
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


def save(path: PathLike, model: "Layer", optimizer: Optional["Optimizer"] = None,
         trainer_state: Optional[Config] = None) -> None:
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

    def __init__(self, model: "Layer", optimizer_config: Optional[Config],
                 optimizer_state: Optional[Dict[str, Array]], trainer_state: Optional[Config],
                 format_version: int) -> None:
        self.model = model
        self.optimizer_config = optimizer_config
        self.optimizer_state = optimizer_state
        self.trainer_state = trainer_state
        self.format_version = format_version

    def __repr__(self) -> str:
        return (f"Checkpoint(model={type(self.model).__name__}, optimizer="
                f"{None if self.optimizer_config is None else self.optimizer_config['class']}, "
                f"trainer_state={self.trainer_state is not None})")


def _read_arrays(path: PathLike) -> Dict[str, Array]:
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{name}: no such file")
    try:
        f = np.load(name, allow_pickle=False)
    except Exception as e:  # zipfile alone raises BadZipFile, NotImplementedError, EOFError...
        raise ValueError(f"{name}: not a readable cnncore model file ({type(e).__name__}: {e})") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{name}: not a cnncore model file (a single .npy array, not an .npz "
                         "archive)")
    with f:
        problem = _check_members(f.zip, os.path.getsize(name)) if f.zip is not None else None
        if problem is not None:
            raise ValueError(f"{name}: corrupt cnncore model file ({problem})")
        try:
            arrays = {k: f[k] for k in f.files}
        except Exception as e:  # truncated / corrupt members surface here
            raise ValueError(f"{name}: corrupt cnncore model file ({type(e).__name__}: {e})") from e
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # np.load returns other members as bytes
            raise ValueError(f"{name}: corrupt cnncore model file (entry {key!r} is not a .npy "
                             "array)")
    return arrays


_NPY_HEADER_READERS: Dict[Tuple[int, ...], str] = {(1, 0): "read_array_header_1_0",
                                                   (2, 0): "read_array_header_2_0"}


def _check_members(archive: zipfile.ZipFile, archive_size: int) -> Optional[str]:
    """Check every member's .npy header against the bytes the member holds, before NumPy
    allocates the array the header announces: a corrupt or hostile file must not make us
    allocate more than its arrays need. Return a description of the first problem, or None."""
    fmt = np.lib.format
    for info in archive.infolist():
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            return f"member {info.filename!r}: compression method {info.compress_type} (NumPy " \
                   "writes stored or deflated members only)"
        if info.compress_size > archive_size or (
                info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size) \
                or info.file_size > 1032 * info.compress_size + 1024:  # deflate's largest ratio
            return f"member {info.filename!r}: sizes {info.compress_size} -> {info.file_size} " \
                   f"impossible in a {archive_size}-byte file"
        if not info.filename.endswith(".npy"):
            continue
        try:
            with archive.open(info) as fp:
                if fp.read(len(fmt.MAGIC_PREFIX)) != fmt.MAGIC_PREFIX:
                    continue  # np.load returns it as bytes: refused by the caller
                version = tuple(fp.read(2))
                reader = getattr(fmt, _NPY_HEADER_READERS.get(version, ""), None)
                if reader is not None:
                    shape, _, dtype = reader(fp)
                elif version == (3, 0) and hasattr(fmt, "_read_array_header"):
                    shape, _, dtype = fmt._read_array_header(fp, version)
                else:
                    return f"member {info.filename!r}: unknown .npy format version {version}"
                held = info.file_size - fp.tell()
        except Exception as e:  # malformed header: let np.load report it in full
            if isinstance(e, MemoryError):
                raise
            continue
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize > held:
            return f"entry {info.filename[:-4]!r} announces shape {shape} of {dtype} " \
                   f"({count * dtype.itemsize} bytes) but holds {held} bytes"
    return None


def _text(arrays: Mapping[str, Array], key: str, name: str) -> str:
    try:
        value = arrays[key]
    except KeyError:
        raise ValueError(f"{name}: missing entry {key!r}; not a cnncore model file or "
                         "corrupt") from None
    if value.shape != () or value.dtype.kind != "U":
        raise ValueError(f"{name}: entry {key!r} should be a string, got {value.dtype} "
                         f"{value.shape}")
    if not _valid_unicode(value):
        raise ValueError(f"{name}: entry {key!r} holds invalid Unicode code points")
    return str(value[()])


def _valid_unicode(value: Array) -> bool:
    """True if the UCS-4 array ``value`` holds only valid code points (NumPy turns code
    points above U+10FFFF into a malformed Python str instead of raising)."""
    codes = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("=")).view(np.uint32)
    return codes.size == 0 or int(codes.max()) <= 0x10FFFF


def _json(arrays: Mapping[str, Array], key: str, name: str) -> Any:
    try:
        value = json.loads(_text(arrays, key, name))
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: entry {key!r} is not valid JSON ({e})") from e
    except RecursionError:
        raise ValueError(f"{name}: entry {key!r} is JSON nested too deeply") from None
    return value


def _positive_ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _parameter_elements(config: Any) -> int:
    """Elements of the parameters and buffers that the layers of ``config`` (an architecture
    from the file, not yet trusted) will allocate: exact for the built-in layers that have
    any (convolutions, Linear, batch norms), 0 for others and for configs the constructors
    will refuse anyway. Walks the tree without recursion."""
    total, todo = 0, [config]
    while todo:
        node = todo.pop()
        if not isinstance(node, dict):
            continue
        children = node.get("children")
        if isinstance(children, list):
            todo.extend(children)
        kind, config_value = node.get("class"), node.get("config")
        if not isinstance(config_value, dict):
            continue
        cfg: Any = config_value  # untrusted values: checked by _positive_ints before use
        bias = 0 if cfg.get("bias", True) is False else 1
        if kind in ("Conv1d", "Conv2d"):
            c_in, c_out, groups = (cfg.get("in_channels"), cfg.get("out_channels"),
                                   cfg.get("groups", 1))
            k = cfg.get("kernel_size")
            k = [k] * (2 if kind == "Conv2d" else 1) if not isinstance(k, list) else k
            if _positive_ints(c_in, c_out, groups, *k) and c_in % groups == 0:
                size = c_out * (c_in // groups)
                for n in k:
                    size *= n
                total += size + bias * c_out
        elif kind == "Linear":
            n_in, n_out = cfg.get("in_features"), cfg.get("out_features")
            if _positive_ints(n_in, n_out):
                total += n_out * n_in + bias * n_out
        elif kind in ("BatchNorm1d", "BatchNorm2d"):
            if _positive_ints(cfg.get("num_features")):
                total += 4 * cfg["num_features"]  # weight, bias, running mean and variance
    return total


def load_checkpoint(path: PathLike) -> Checkpoint:
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
    if magic is None or magic.dtype.kind != "U" or magic.shape != () or \
            not _valid_unicode(magic) or str(magic[()]) != _MAGIC:
        raise ValueError(f"{name}: not a cnncore model file (no '__format__' = {_MAGIC!r} entry)")
    stored_version = arrays.get("__version__")
    if (stored_version is None or stored_version.shape != ()
            or stored_version.dtype.kind not in "iu"):
        raise ValueError(f"{name}: missing or invalid format version")
    version = int(stored_version)
    if version > FORMAT_VERSION:
        written_by = arrays.get("__cnncore_version__")
        by = (f" (written by cnncore {written_by[()]})" if written_by is not None and
              written_by.dtype.kind == "U" and _valid_unicode(written_by) else "")
        raise ValueError(f"{name}: file format version {version}{by} is newer than the versions "
                         f"this cnncore {__version__} reads (up to {FORMAT_VERSION}); "
                         "upgrade cnncore")
    if version < 1:
        raise ValueError(f"{name}: invalid format version {version}")
    arch = _json(arrays, "__architecture__", name)
    state: Dict[str, Array] = {}
    for key, value in arrays.items():
        for prefix in ("param/", "buffer/"):
            if key.startswith(prefix):
                if value.dtype.kind != "f":
                    raise ValueError(f"{name}: entry {key!r} has dtype {value.dtype}; parameters "
                                     "and buffers are floating-point arrays")
                state[key[len(prefix):]] = value
    # every parameter and buffer of the model must be in the file, so a model that needs far
    # more elements than the file holds cannot load: refuse it before building it (which
    # would allocate and initialise whatever the architecture asks for, terabytes included);
    # a small excess is left to load_state_dict, which names the missing entries
    needed, held = _parameter_elements(arch), sum(v.size for v in state.values())
    if needed > held + max(held, 1 << 20):
        raise ValueError(f"{name}: the architecture needs {needed} parameter and buffer "
                         f"elements but the file holds only {held}")
    from . import zoo  # noqa: F401  (registers the zoo's layer classes; imported when needed)
    try:
        model = layer_from_config(arch)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as e:
        raise ValueError(f"{name}: cannot rebuild the architecture ({type(e).__name__}: {e})") from e
    extra = _json(arrays, "__extra_state__", name)
    if not isinstance(extra, dict):
        raise ValueError(f"{name}: entry '__extra_state__' must be a JSON object, got "
                         f"{type(extra).__name__}")
    try:
        model.load_state_dict(state, where=name)
        model.load_extra_states(extra)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{name}: invalid layer state ({type(e).__name__}: {e})") from e
    model.eval()
    opt_config: Optional[Config] = None
    opt_state: Optional[Dict[str, Array]] = None
    trainer_state: Optional[Config] = None
    if "__optimizer__" in arrays:
        opt_config = _json(arrays, "__optimizer__", name)
        opt_state = {k[len("optimizer/"):]: v for k, v in arrays.items()
                     if k.startswith("optimizer/")}
    if "__trainer__" in arrays:
        trainer_state = _json(arrays, "__trainer__", name)
    return Checkpoint(model, opt_config, opt_state, trainer_state, version)


def load(path: PathLike) -> "Layer":
    """Rebuild the model saved in ``path`` by :func:`save` / ``model.save``.

    The model is returned in eval mode (call ``model.train()`` to train it further); its
    predictions equal the saved model's exactly.
    """
    return load_checkpoint(path).model


register_model_function("save", save)
