"""Tasks for rlgeom behind one vectorised, torch-speaking interface (see rlgeom.envs.base).

The modules live in the distribution's top-level `envs/` folder (the layout as drawn); this package is their
import name, so rlgeom never depends on what the top-level name `envs` resolves to in a user's directory.
"""

import pathlib

# rlgeom/envs/ holds only this file: the package's modules are the sibling folder's, both in a source
# checkout and in an installed wheel (setuptools installs rlgeom/, agents/ and envs/ side by side)
__path__ = [str(pathlib.Path(__file__).resolve().parents[2] / "envs")]

from rlgeom.envs.base import StepResult, VecEnv
from rlgeom.envs.boundary import NonFiniteEnvError
from rlgeom.envs.make import make_vec_env

__all__ = ["VecEnv", "StepResult", "make_vec_env", "NonFiniteEnvError"]
