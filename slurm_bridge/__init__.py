"""The slurm_bridge: runs on the HPC frontend as root, spawns user instances, watches Slurm."""
