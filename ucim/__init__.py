"""ucim: a Kubernetes-native integration module connecting UCloud to Slurm clusters.

The components live in top-level folders and import as ``ucim.<component>``:
``ucim.gateway``, ``ucim.operator``, ``ucim.slurm_bridge``, ``ucim.user_sidecar``;
code they share lives in ``ucim.common``.
"""

__version__ = "0.1.0"
