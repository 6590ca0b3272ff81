"""Tasks for rlgeom behind one vectorised, torch-speaking interface (see envs.base)."""

from envs.base import StepResult, VecEnv
from envs.boundary import NonFiniteEnvError
from envs.make import make_vec_env

__all__ = ["VecEnv", "StepResult", "make_vec_env", "NonFiniteEnvError"]
