"""Reading a model file that may be hostile, in bounded memory (issue 17, item 5).

A model file is safetensors: 8 bytes of header length, a JSON header (tensor name -> dtype, shape,
byte range; `__metadata__` holds rlgeom's JSON description), then the tensor bytes. `open_model`
reads and checks the header only: its size, its JSON (no list where an object belongs, no nesting
deep enough to exhaust the interpreter's stack), every tensor's dtype, shape and byte range against
the file's real length. Nothing else is read until the caller has compared that header with the
model the description builds (`check_tensor_budget`, `check_against`); then `tensors()` reads the
tensors one at a time, each exactly its declared size. A sparse multi-GB file or a description of a
billion-unit layer is refused after reading a few kilobytes.

The safetensors library writes these files; reading is done here because its readers either take the
whole file as bytes (`load`) or only a path (`safe_open`), while a model may also come from an open
file object, and every size must be checked before anything is allocated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat

import torch

from rlgeom.validation import hidden_weights
from rlgeom.persistence.serialization import FORMAT, FORMAT_VERSION, ModelFileError, model_file_candidates, model_path

#: safetensors' own limit on the header (a model's description included)
MAX_HEADER_BYTES = 100 * 2**20
#: the dtypes rlgeom writes (and safetensors' names for them)
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CHUNK = 16 * 2**20  # bytes per read when streaming a checksum


class ModelFile:
    """The checked header of a model file; tensors are read only when asked for."""

    def __init__(self, source, name: str, size: int, entries: dict, metadata: dict, data_start: int, opened=None):
        self.source, self.name, self.size = source, name, size
        # the file the header was read from, kept open: a writer replaces the path by rename, so this one open
        # file still shows the version whose header was checked (reopening the path could show the next one)
        self._file = opened
        self.entries = entries  # name -> (torch dtype, shape tuple, begin, end), begin/end relative to data_start
        self.metadata, self._data_start = metadata, data_start
        self.description = _description(metadata, name)

    def nbytes(self, prefix: str = "") -> int:
        """Bytes of the tensors whose names start with `prefix`."""
        return sum(end - begin for key, (_, _, begin, end) in self.entries.items() if key.startswith(prefix))

    def shapes(self, prefix: str = "") -> dict[str, tuple]:
        return {key: shape for key, (_, shape, _, _) in self.entries.items() if key.startswith(prefix)}

    def check_tensor_budget(self, max_bytes: int, what: str) -> None:
        """Refuse, before reading any tensor, a file whose tensors add up to more than `max_bytes`."""
        if self.nbytes() > max_bytes:
            raise ModelFileError(
                f"{self.name}: its tensors take {self.nbytes():,} bytes, more than {what} can use ({max_bytes:,} "
                "bytes); the file does not hold the model it describes")

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Every tensor, read one at a time, after which the checksum is verified."""
        out = {}
        with self._open() as f:
            for key, (dtype, shape, begin, end) in self.entries.items():
                f.seek(self._data_start + begin)
                raw = f.read(end - begin)
                if not isinstance(raw, (bytes, bytearray)) or len(raw) != end - begin:
                    raise ModelFileError(f"{self.name}: the file ends inside the tensor {key!r} (truncated?)")
                out[key] = (torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                            ).reshape(shape)
        if digest_tensors(out) != self.metadata["tensors_sha256"]:
            raise ModelFileError(f"{self.name}: checksum mismatch: the tensor data was modified or corrupted")
        return {k: v.to(device) for k, v in out.items()}

    def verify(self) -> None:
        """Check the checksum while streaming the tensor bytes (memory: one chunk, whatever the file's size)."""
        digest = hashlib.sha256()
        with self._open() as f:
            for key in sorted(self.entries):
                dtype, shape, begin, end = self.entries[key]
                digest.update(_digest_prefix(key, dtype, shape))
                f.seek(self._data_start + begin)
                left = end - begin
                while left:
                    chunk = f.read(min(left, _CHUNK))
                    if not chunk:
                        raise ModelFileError(f"{self.name}: the file ends inside the tensor {key!r} (truncated?)")
                    digest.update(chunk)
                    left -= len(chunk)
        if digest.hexdigest() != self.metadata["tensors_sha256"]:
            raise ModelFileError(f"{self.name}: checksum mismatch: the tensor data was modified or corrupted")

    @contextlib.contextmanager
    def _open(self):
        with _read_errors(self.name):
            if self._file is not None:
                source = _Borrowed(self._file)
            elif isinstance(self.source, str):  # after close(): the path as it is now
                source = open(self.source, "rb")
            else:
                source = _Borrowed(self.source)
            with source as f:
                yield f

    def close(self) -> None:
        """Close the file the header was read from (a caller's file object is never closed)."""
        opened, self._file = self._file, None
        if opened is not None:
            opened.close()

    def __enter__(self) -> "ModelFile":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __del__(self):
        self.close()


class _Borrowed:
    """A caller's file object used as a context manager without closing it."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


def open_model(path) -> ModelFile:
    """The checked header of the model file at `path` (or in an open binary file object)."""
    if hasattr(path, "read"):
        name = str(getattr(path, "name", repr(path)))
        try:  # sizes are checked against the file's length, and tensors read where the header says
            start = path.tell()
            size = path.seek(0, os.SEEK_END) - start
            path.seek(start)
        except (OSError, AttributeError, ValueError) as err:
            raise ModelFileError(f"{name}: a model file object must be open, binary and seekable: {err}") from None
        with _Borrowed(path) as f, _read_errors(name):
            entries, metadata, header_len = _read_header(f, size, name)
        return ModelFile(path, name, size, entries, metadata, start + 8 + header_len)
    # the first of the names load(path) accepts that exists (an SB3 zip among them is named by its content)
    name = next((c for c in model_file_candidates(path) if os.path.exists(c)), model_path(path))
    _check_regular_file(name)
    with _read_errors(name):
        f = open(name, "rb")
        try:  # header and tensors from this one open file (ModelFile keeps it)
            size = os.fstat(f.fileno()).st_size
            entries, metadata, header_len = _read_header(f, size, name)
            return ModelFile(name, name, size, entries, metadata, 8 + header_len, opened=f)
        except BaseException:  # a bad header or description: the file is closed here, not whenever GC runs
            f.close()
            raise


def _check_regular_file(name: str) -> None:
    """A model file is a regular file: a folder, a device, a pipe or a socket is refused before it is opened
    (opening a pipe would wait for a writer forever)."""
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise ModelFileError(f"{name}: no such model file") from None
    except OSError as err:
        raise ModelFileError(f"{name}: cannot read it: {err.strerror or err}") from None
    if stat.S_ISDIR(mode):
        raise ModelFileError(f"{name}: is a folder, not a model file")
    if not stat.S_ISREG(mode):
        raise ModelFileError(f"{name}: is not a regular file (a device, pipe or socket); a model file is a regular "
                             "file written by save() or save_checkpoint()")


@contextlib.contextmanager
def _read_errors(name: str):
    """An OSError while reading (EIO from /proc/self/mem, a failing disk) as the ModelFileError naming the file."""
    try:
        yield
    except OSError as err:
        raise ModelFileError(f"{name}: cannot be read as a model file: {err.strerror or err}") from None


#: the first bytes of a zip archive: Stable-Baselines3's model format
ZIP_MAGIC = b"PK\x03\x04"


def sb3_format_message(name: str) -> str:
    return (f"{name}: a Stable-Baselines3 model (a zip of pickled data and PyTorch weights), not rlgeom's safetensors "
            "format; rlgeom never unpickles it. Import its weights with the matching agent: PPO.load_sb3(path) "
            "(A2C -> VPG.load_sb3, sb3-contrib TRPO -> TRPO.load_sb3), which reads policy.pth with "
            "torch.load(weights_only=True) and the JSON 'data' only")


def _read_header(f, size: int, name: str) -> tuple[dict, dict, int]:
    head = f.read(8)
    if isinstance(head, str):
        raise ModelFileError(f"{name}: a model file object must be opened in binary mode ('rb'), got text")
    if head[:4] == ZIP_MAGIC:
        raise ModelFileError(sb3_format_message(name))
    if len(head) < 8:
        raise ModelFileError(f"{name}: not a readable safetensors model file: shorter than its header (truncated?)")
    n = int.from_bytes(head, "little")
    if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
        raise ModelFileError(f"{name}: not a readable safetensors model file: header length {n} does not fit the file's "
                             f"{size} bytes (truncated or corrupted?)")
    text = f.read(n)
    header = _json(text, name, "not a readable safetensors model file: its header")
    if not isinstance(header, dict):
        raise ModelFileError(f"{name}: the safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(f"{name}: not an rlgeom model (no '{FORMAT}' header)")
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{name}: not an rlgeom model (no '{FORMAT}' header)")
    # The checksum detects corruption (a flipped bit, a truncated copy), not tampering: whoever edits
    # the tensors can rewrite it. A file without one is refused, so deleting it switches nothing off.
    if "tensors_sha256" not in metadata:
        raise ModelFileError(f"{name}: the header has no tensors_sha256 checksum (every rlgeom model file has one)")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ModelFileError(f"{name}: model format version {metadata.get('format_version')!r}; this rlgeom reads "
                             f"version {FORMAT_VERSION}")
    return _entries(header, size - 8 - n, name), metadata, n


def _entries(header: dict, data_size: int, name: str) -> dict:
    """Each tensor's (dtype, shape, begin, end), checked: a known dtype, a shape of non-negative ints whose
    byte size is its byte range, ranges inside the data and not overlapping."""
    entries, ranges = {}, []
    for key, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ModelFileError(f"{name}: malformed header entry for tensor {key!r}")
        dtype, shape, offsets = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None, \
            info["shape"], info["data_offsets"]
        if dtype is None:
            raise ModelFileError(f"{name}: tensor {key!r} has dtype {info['dtype']!r}; accepted: {', '.join(DTYPES)}")
        if not (isinstance(shape, list) and all(_nat(d) for d in shape) and isinstance(offsets, list)
                and len(offsets) == 2 and all(_nat(o) for o in offsets) and offsets[0] <= offsets[1] <= data_size):
            raise ModelFileError(f"{name}: tensor {key!r} has a malformed shape {shape!r} or byte range {offsets!r} "
                                 f"(the file holds {data_size} bytes of tensor data)")
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if math.prod(shape) * itemsize != offsets[1] - offsets[0]:
            raise ModelFileError(f"{name}: tensor {key!r} of shape {shape} and dtype {info['dtype']} does not take "
                                 f"its {offsets[1] - offsets[0]} bytes")
        entries[key] = (dtype, tuple(shape), offsets[0], offsets[1])
        ranges.append(tuple(offsets))
    ranges.sort()
    if any(a[1] > b[0] for a, b in zip(ranges, ranges[1:])):
        raise ModelFileError(f"{name}: tensors overlap in the file")
    return entries


def _nat(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62


def _json(text: bytes, name: str, what: str):
    """Parsed JSON; a RecursionError (nesting deeper than the interpreter's stack) is the file's fault too."""
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, (bytes, bytearray)) else text)
    except RecursionError:
        raise ModelFileError(f"{name}: {what} is JSON nested too deeply to be a model") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{name}: {what} is not valid JSON (truncated or corrupted?): {err}") from None


def _description(metadata: dict, name: str) -> dict:
    if "description" not in metadata:
        raise ModelFileError(f"{name}: the model description is missing")
    description = _json(metadata["description"], name, "the model description")
    if not isinstance(description, dict):
        raise ModelFileError(f"{name}: the model description is a JSON {type(description).__name__}, not an object")
    return description


# ----------------------------------------------------------------------------- checksum
def _digest_prefix(key: str, dtype: torch.dtype, shape: tuple) -> bytes:
    return f"{key}|{dtype}|{tuple(shape)}|".encode()


def digest_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (CPU tensors); `verify`
    computes the same digest from the file's bytes."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        digest.update(_digest_prefix(key, t.dtype, tuple(t.shape)))
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


__all__ = ["MAX_HEADER_BYTES", "DTYPES", "ModelFile", "open_model", "digest_tensors"]


# ----------------------------------------------------------------------------- the description
#: the most envs a model file may ask load() to build (a corrupted or hostile count must not start millions)
MAX_ENVS = 2**16
#: the most envs load(path, env="<gymnasium id>") builds from a file's n_envs: each is a separate simulator in
#: this process (a Hopper takes about 1 MB), so 65536 of them would take about 70 GB; torch-native envs are
#: batched tensors and take up to MAX_ENVS. More: build the vector env and pass it as env=.
MAX_ENVS_FROM_ID = 1024


def check_envs_to_build(model: ModelFile, env, batched_prefix: str) -> None:
    """Refuse, before any env is built, a file whose n_envs would build more than MAX_ENVS_FROM_ID
    gymnasium envs from the env id `env` (a VecEnv the caller built has its own count; an id starting with
    `batched_prefix`, a torch-native env, is one batched simulator)."""
    n_envs = model.description.get("n_envs", 1)
    if isinstance(env, str) and not env.startswith(batched_prefix) and n_envs > MAX_ENVS_FROM_ID:
        raise ModelFileError(
            f"{model.name}: the description's n_envs={n_envs} would build {n_envs} {env} envs in this process; "
            f"accepted: at most {MAX_ENVS_FROM_ID} from an env id (more: build the vector env, e.g. "
            f"envs.make_vec_env({env!r}, n), and pass it as env=)")
#: the most elements a saved observation or action space may have (a 4096 x 4096 image is 2**24)
MAX_SPACE_ELEMENTS = 2**26
#: tensors beyond the policy's own (optimiser moments, K-FAC factors and their eigenbases, RNG states) may
#: take this many times the policy's bytes, plus a constant: a bound proportional to the real model
EXTRA_STATE_FACTOR, EXTRA_STATE_BYTES = 32, 64 * 2**20


def check_description(model: ModelFile) -> None:
    """The description's counts and sizes, checked before anything is built from them: counters are
    integers in range, the envs and spaces are of sane sizes, and the network it describes is no larger
    than the policy tensors the file holds (so a billion-unit layer is never allocated)."""
    d, name = model.description, model.name
    for key in ("num_timesteps", "n_updates", "sb3_n_updates"):
        if key in d and not _nat(d[key]):
            raise ModelFileError(f"{name}: bad step counters in the description: {key} must be a non-negative "
                                 f"integer, got {d[key]!r:.80}")
    if not isinstance(d.get("tensorboard_log"), (str, type(None))) or not _nat(d.get("verbose", 0)):
        raise ModelFileError(f"{name}: the model description is inconsistent: tensorboard_log must be a path or null "
                             f"and verbose a non-negative integer, got {d.get('tensorboard_log')!r:.80}, "
                             f"{d.get('verbose')!r:.80}")
    n_envs = d.get("n_envs", 1)
    if not _nat(n_envs) or not 1 <= n_envs <= MAX_ENVS:
        raise ModelFileError(f"{name}: the model description is inconsistent: n_envs must be an integer from 1 to "
                             f"{MAX_ENVS}, got {n_envs!r:.80}")
    if d.get("seed") is not None and not (_nat(d["seed"]) and d["seed"] < 2**63):
        raise ModelFileError(f"{name}: the model description is inconsistent: seed must be a non-negative integer "
                             f"or null, got {d['seed']!r:.80}")
    for key, kind in (("algo", str), ("policy", (str, dict)), ("hyperparameters", dict), ("observation_space", dict),
                      ("action_space", dict)):
        if not isinstance(d.get(key), kind):
            raise ModelFileError(f"{name}: the model description is incomplete or inconsistent: {key} must be a JSON "
                                 f"{'string' if kind is str else 'object' if kind is dict else 'string or object'}, got {d.get(key)!r:.80}")
    if not isinstance(d.get("policy_kwargs") or {}, dict):
        raise ModelFileError(f"{name}: the model description is inconsistent: policy_kwargs must be a JSON object")
    bad = _non_finite(d["hyperparameters"])
    if bad:
        raise ModelFileError(f"{name}: the model description is inconsistent: the hyperparameter {bad} is not a finite number")
    if "checkpoint" in d:
        _check_checkpoint_record(d["checkpoint"], name)
    obs_size, act_size = (_space_elements(d[k], name, k) for k in ("observation_space", "action_space"))
    described = _min_parameters(d, obs_size, act_size)
    held = sum(math.prod(shape) for shape in model.shapes("policy.").values())
    if described > held:
        raise ModelFileError(f"{name}: the description asks for a network of at least {described:,} parameters but the "
                             f"file holds {held:,}; it does not describe the weights it holds")


def _non_finite(value, path: str = "") -> str | None:
    """The path of the first NaN / inf number in nested JSON (None if there is none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path.lstrip(".") or "value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}")
        if found:
            return found
    return None


def _check_checkpoint_record(record, name: str) -> None:
    """A checkpoint's training record: an object whose counters are integers and whose state is an object."""
    def fail(what: str):
        raise ModelFileError(f"{name}: the checkpoint record is inconsistent: {what}")

    if not isinstance(record, dict):
        fail(f"it must be a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("state"), dict):
        fail(f"state must be a JSON object, got {type(record.get('state')).__name__}")
    for key in ("target_timesteps", "skipped_updates", "consecutive_skips", "last_checkpoint_step"):
        if record.get(key) is not None and not _nat(record[key]):
            fail(f"{key} must be a non-negative integer, got {record[key]!r:.80}")
    for key in ("checkpoint_every", "keep_checkpoints"):
        if record.get(key) is not None and not (_nat(record[key]) and record[key] >= 1):
            fail(f"{key} must be a positive integer, got {record[key]!r:.80}")
    episodes = record.get("ep_info_buffer", [])
    if not isinstance(episodes, list) or not all(
            isinstance(e, dict) and isinstance(e.get("r"), (int, float)) and not isinstance(e.get("r"), bool)
            and math.isfinite(e["r"]) and _nat(e.get("l")) for e in episodes):
        fail("ep_info_buffer must be a list of {\"r\": finite return, \"l\": length} objects")


def _space_elements(space: dict, name: str, key: str) -> int:
    """How many numbers one element of a saved space has (actions: outputs of the policy's head)."""
    kind = space.get("type")
    if kind == "Discrete":
        size = space.get("n")
    elif kind == "MultiDiscrete":
        nvec = space.get("nvec")
        size = sum(nvec) if isinstance(nvec, list) and all(_nat(n) for n in nvec) else None
    elif kind == "MultiBinary":
        n = space.get("n")
        size = math.prod(n) if isinstance(n, list) and all(_nat(k) for k in n) else n
    elif kind == "Box":
        shape = space.get("shape")
        size = math.prod(shape) if isinstance(shape, list) and all(_nat(k) for k in shape) else None
    else:
        return 0  # other spaces (Dict, ...) are checked when they are rebuilt
    if not _nat(size) or size > MAX_SPACE_ELEMENTS:
        raise ModelFileError(f"{name}: {key} is a {kind} of size {size!r:.40}; accepted: up to {MAX_SPACE_ELEMENTS} elements")
    return size


def _min_parameters(d: dict, obs_size: int, act_size: int) -> int:
    """A lower bound on the parameters of the network the description builds: the weights between its
    hidden layers and into its heads (and, for a plain MLP, from the observation), ignoring biases and
    any features extractor, so it never exceeds the real count."""
    kwargs = d.get("policy_kwargs") or {}
    arch = kwargs.get("net_arch")
    if isinstance(arch, list):
        towers = [(arch, act_size), (arch, 1)]
    elif isinstance(arch, dict):
        towers = [(arch.get("pi"), act_size), (arch.get("vf"), 1)]
    else:
        towers = []
    plain_mlp = d.get("policy") == "MlpPolicy" and "features_extractor_class" not in kwargs
    total = 0
    for widths, outputs in towers:
        widths = [w for w in widths if _nat(w)] if isinstance(widths, list) else []
        if not widths:
            continue
        total += hidden_weights(widths) + widths[-1] * outputs
        total += obs_size * widths[0] if plain_mlp else 0
    return total
