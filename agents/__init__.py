"""The public face `agents`: the same modules as `rlgeom.agents` (see rlgeom.public_names).

`from agents import ...` keeps working for users; rlgeom's own code imports only `rlgeom.agents`.
"""

from rlgeom.public_names import expose

expose(__name__, "rlgeom.agents")
