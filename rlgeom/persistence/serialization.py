"""Saved models: one safetensors file whose header metadata holds the JSON description.

Nothing is ever unpickled: weights are read by safetensors, everything else is JSON. Every
problem with a file raises `ModelFileError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from gymnasium import spaces

from rlgeom.persistence.outputs import write_atomically, write_error

FORMAT = "rlgeom-model"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"


class ModelFileError(ValueError):
    """A saved model that cannot be used: missing, truncated, corrupted, edited or mismatched."""


def model_path(path: str | os.PathLike) -> str:
    """The file a model is saved to, named as SB3 names it: the path as given when its name has an extension
    (`x.zip`, which SB3 code and its CheckpointCallback pass and later load or delete; `policy.pkl`), else
    with `.safetensors` appended (SB3 appends `.zip`). The content is rlgeom's safetensors format whatever
    the name: never a zip, never a pickle."""
    path = os.fspath(path)
    return path if os.path.splitext(os.path.basename(path))[1] else path + SUFFIX


def model_file_candidates(path: str | os.PathLike) -> list[str]:
    """Where `load(path)` looks, in order: the path as given, `path + ".safetensors"` (what earlier rlgeom
    versions wrote for any path), for `x.zip` also `x.safetensors` (earlier versions' save("x.zip")), else
    `path + ".zip"` (as SB3's load(path) finds path + ".zip"). A file's format is read from its content."""
    path = os.fspath(path)
    found = [path, path if path.endswith(SUFFIX) else path + SUFFIX]
    found.append(path[: -len(".zip")] + SUFFIX if path.endswith(".zip") else path + ".zip")
    return list(dict.fromkeys(found))


#: modules whose classes a model file may name and `load` imports by itself; any other class (a user's
#: features extractor) is used only when the caller passes it in `custom_objects`
TRUSTED_MODULES = ("rlgeom", "stable_baselines3", "sb3_contrib", "torch")


def class_to_json(cls: type) -> dict:
    return {"class": f"{cls.__module__}:{cls.__qualname__}"}


def class_from_json(value: dict, key: str, custom_objects: dict | None, where: str):
    """The class a model file names, imported only from TRUSTED_MODULES, else taken from custom_objects."""
    import importlib

    name = value.get("class") if isinstance(value, dict) else None
    if not isinstance(name, str) or ":" not in name:
        raise ModelFileError(f"{where}: policy_kwargs.{key} is not a class reference: {value!r}")
    if custom_objects and key in custom_objects:
        return custom_objects[key]
    module, _, qualname = name.partition(":")
    if module.split(".")[0] not in TRUSTED_MODULES:
        raise ModelFileError(
            f"{where}: the model uses the class {name} for policy_kwargs.{key}, which load() does not import by "
            f"itself (only {', '.join(TRUSTED_MODULES)} are); pass it: load(path, custom_objects={{{key!r}: "
            f"{qualname.split('.')[-1]}}})")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ModelFileError(f"{where}: cannot find the class {name} for policy_kwargs.{key}: {err}") from None
    return obj


def policy_kwargs_to_json(kwargs: dict) -> dict:
    """policy_kwargs as JSON: classes (activation_fn, features_extractor_class) by module:qualname."""
    return {k: class_to_json(v) if isinstance(v, type) else v for k, v in kwargs.items()}


def policy_kwargs_from_json(kwargs: dict | None, custom_objects: dict | None = None, where: str = "model") -> dict:
    """The inverse of policy_kwargs_to_json; `custom_objects` supplies classes load() must not import,
    by policy_kwargs key (SB3's `custom_objects={"policy_kwargs": {...}}` replaces the whole dict)."""
    if custom_objects and isinstance(custom_objects.get("policy_kwargs"), dict):
        return dict(custom_objects["policy_kwargs"])
    if not isinstance(kwargs, dict):
        raise ModelFileError(f"{where}: policy_kwargs must be a JSON object, got {type(kwargs).__name__}")
    return {k: class_from_json(v, k, custom_objects, where) if isinstance(v, dict) and "class" in v else v
            for k, v in kwargs.items()}


def space_to_json(space) -> dict:
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
            "low": space.low.tolist(), "high": space.high.tolist(),
        }
    if isinstance(space, spaces.Dict):  # keys in order, as a list of pairs (JSON objects need not keep order)
        return {"type": "Dict", "spaces": [[key, space_to_json(sub)] for key, sub in space.spaces.items()]}
    raise ModelFileError(f"cannot save a model for space {space!r}")


def space_from_json(d: dict):
    kind = d.get("type")
    if kind == "Discrete":
        return spaces.Discrete(d["n"], start=d.get("start", 0))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(d["nvec"], start=d.get("start"))
    if kind == "MultiBinary":
        return spaces.MultiBinary(d["n"])
    if kind == "Box":
        dtype = np.dtype(d["dtype"])
        return spaces.Box(np.array(d["low"], dtype=dtype), np.array(d["high"], dtype=dtype), tuple(d["shape"]), dtype)
    if kind == "Dict" and isinstance(d.get("spaces"), list):
        pairs = [(key, sub) for key, sub in d["spaces"]]
        if any(not isinstance(key, str) or not isinstance(sub, dict) or sub.get("type") == "Dict" for key, sub in pairs):
            raise ValueError("a Dict space holds [name, space] pairs of non-Dict spaces")
        return spaces.Dict([(key, space_from_json(sub)) for key, sub in pairs])  # pairs keep the saved order
    raise ValueError(f"unknown space type {kind!r}")


def spaces_equal(a, b) -> bool:
    return space_to_json(a) == space_to_json(b)


def is_file_object(target) -> bool:
    """An open binary file or buffer (io.BytesIO, open(p, "wb")) rather than a path: SB3's save/load take both."""
    return hasattr(target, "write") or hasattr(target, "read")


def encode_model(tensors: dict[str, torch.Tensor], description: dict) -> bytes:
    """The bytes of a model file: safetensors with the JSON description in its header."""
    from safetensors.torch import save

    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "description": json.dumps(description)}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # A SHA-256 of the tensors goes into the header, so a flipped bit in the weights is an error on
    # load rather than a silently different model.
    meta["tensors_sha256"] = tensor_digest(tensors)
    return save(tensors, metadata=meta)


def write_model(path: str, tensors: dict[str, torch.Tensor], description: dict, resume_from: str | None = None) -> str:
    """Atomically write weights + description (temporary file, fsync, rename); an open binary file
    object (io.BytesIO, a file opened "wb") gets the bytes written to it instead, and its name is returned.
    `resume_from`: a folder of checkpoints that a disk-full error may suggest resuming from."""
    if is_file_object(path):
        path.write(encode_model(tensors, description))
        return getattr(path, "name", repr(path))
    path = model_path(path)
    data = encode_model(tensors, description)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as err:
        raise write_error(path, err, resume_from=resume_from) from None
    # a temporary name unique to this process and call, removed again if the write fails (ENOSPC)
    return write_atomically(path, data, resume_from)


def read_model(path: str, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, description) of a saved model (a path or an open binary file object); ModelFileError on
    any problem with the file. The header is checked before any tensor is read
    (rlgeom.persistence.modelfile, which `load` uses to compare it with the model first)."""
    with open_model(path) as model:
        return model.tensors(device), model.description


def open_model(path):
    """The checked header and description of a model file, its tensors not yet read (rlgeom.persistence.modelfile)."""
    from rlgeom.persistence import modelfile

    return modelfile.open_model(path)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (CPU tensors)."""
    from rlgeom.persistence.modelfile import digest_tensors

    return digest_tensors(tensors)


def state_aliases(module: torch.nn.Module) -> dict[str, str]:
    """{key: first key} for state-dict entries that are the same tensor as an earlier entry (a features
    extractor shared by actor and critic appears under both names; safetensors stores a tensor once)."""
    first: dict[int, str] = {}
    aliases = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[key] = first[id(tensor)]
        else:
            first[id(tensor)] = key
    return aliases
