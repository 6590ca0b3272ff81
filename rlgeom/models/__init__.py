"""Networks and action distributions: the actor-critic policies (policies), the distribution families
(distributions), and how a network's derivatives are computed (networks, over mlp_backprop)."""
