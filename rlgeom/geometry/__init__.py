"""The geometry: KL, Fisher-vector products, conjugate gradient, the natural step and line search
(fisher), K-FAC (kfac), and the Fisher / Hessian spectrum (spectrum)."""
