"""The drawn public face: the top-level names `agents` and `envs` are `rlgeom.agents` and `rlgeom.envs`.

The agent and env files live in the distribution's top-level `agents/` and `envs/` folders (the layout as
drawn); rlgeom's own code imports them only as `rlgeom.agents` / `rlgeom.envs`, so a user's own `agents/` or
`envs/` package in the working directory breaks nothing of rlgeom's. `from agents import PPO` still works:
importing the top-level name hands back the very same module objects (one `PPO` class, one registry), and
`agents.X` / `envs.X` submodules are aliases of `rlgeom.agents.X` / `rlgeom.envs.X`, never second copies.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)  # the real module: no second copy is executed

    def exec_module(self, module):
        pass


class _SubmoduleAliases(importlib.abc.MetaPathFinder):
    """Resolves `<public>.X` to `<real>.X` while `<public>` is the face of `<real>` (never for a user's own
    package of the same name, which shadows the face and is then left alone)."""

    def __init__(self, public: str, real: str):
        self.public, self.real = public, real

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(self.public + "."):
            return None
        face = sys.modules.get(self.public)
        if face is None or face.__name__ != self.real:
            return None
        real_name = self.real + fullname[len(self.public):]
        if importlib.util.find_spec(real_name) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real_name))


def expose(public: str, real: str) -> None:
    """Make the module being imported as `public` the module `real` (call from `public`'s __init__)."""
    module = importlib.import_module(real)
    sys.modules[public] = module  # the import statement returns sys.modules[public]: the real module
    if not any(isinstance(f, _SubmoduleAliases) and f.public == public for f in sys.meta_path):
        sys.meta_path.insert(0, _SubmoduleAliases(public, real))
