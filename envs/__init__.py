"""The public face `envs`: the same modules as `rlgeom.envs` (see rlgeom.public_names).

`from envs import ...` keeps working for users; rlgeom's own code imports only `rlgeom.envs`.
"""

from rlgeom.public_names import expose

expose(__name__, "rlgeom.envs")
