"""cikg-jax: CIKGRec (Hu et al., AAAI 2025) in JAX/Flax.

Where things live:

- `data/`: reading, validating, splitting and sampling KGAT-format datasets; importing others.
- `graphs/`: the Collaborative Interest Knowledge Graph, its normalised propagation operator and
  sparse products, and the node partitions and halo plans that shard it over devices.
- `models/`: the Flax modules (the LightGCN encoder and CIKGRec, SimGCL, KGAT) and their losses.
- `training/`: the train step (one body for every device layout), the epoch loop, checkpoints, the
  run directory, configuration rules and the mask-rate schedule.
- `parallel/`: the wrappers that run the one step on several devices (data-parallel `pmap`, graph
  modes under `shard_map`) and across processes.
- `evaluation.py`: full-ranking Recall/NDCG@K; `predict.py`, `main.py`: the command lines.
"""

__version__ = "0.1.0"
