"""Defaults shared by every config: the release's DBbook2014 values (docs/method.md §8), paper views,
validation-based model selection. Dataset files override what differs. Any other dataset (README
"Bring your own dataset") runs with these values:

  python -m cikg_jax.main --config=configs/base.py:mydata --workdir=runs/mydata
  python -m cikg_jax.main --config=configs/base.py --config.dataset=mydata --workdir=runs/mydata
"""

import ml_collections


def get_config(dataset: str = "dbbook2014"):
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.data_dir = ""  # or the CIKG_DATA_DIR environment variable
  c.interest_file = ""  # a user_interest_clustered.txt replacing the dataset's own ("" = own)
  # "" (the interests as given), "shuffled" or "random": information-free controls of the same size
  # (cikg_jax/data/interest_controls.py), seeded by config.seed.
  c.interest_control = ""
  c.synthetic_dir = ""  # where the synthetic dataset is generated ("" = ~/.cache/cikg_jax)
  c.synthetic = ml_collections.ConfigDict(dict(n_users=300, n_items=200, seed=0))
  c.selection = "valid"  # "valid": select/stop on a held-out 1/8 of train; "test": the release's
  c.valid_fraction = 0.125
  # Seed of the validation split, fixed across training seeds (a study's seeds vary the model, not
  # the data), and the split inference/generate.py excludes from the LLM prompts; -1 = config.seed.
  c.split_seed = 2024
  c.views = "paper"  # contrastive views: "paper" (the intent) or "release" (its bugs)
  c.seed = 2024

  c.model = ml_collections.ConfigDict()
  c.model.name = (
    "cikgrec"  # or a baseline: "lightgcn", "simgcl", "kgat" (cikg_jax/models/baselines.py)
  )
  c.model.embed_dim = 64
  c.model.num_layers = 3
  c.model.add_self_loops = True
  c.model.use_kg_edges = True
  c.model.use_interest_edges = True
  c.model.edge_dropout = 0.0
  c.model.message_dropout = 0.0
  c.model.backend = "auto"  # "bcsr" (fast on CPU), "segment" (gather + segment_sum), "auto"
  # Memory over recomputation: the contrastive views' and the reconstruction's layers recomputed
  # in the backward pass (jax.checkpoint), only the views' normalised rows kept; for graphs whose
  # activations do not fit (docs/scaling.md). Same values, gradients equal to float rounding.
  c.model.remat = False

  c.train = ml_collections.ConfigDict()
  c.train.lr = 8e-4
  c.train.batch_size = 1024
  # How an epoch's BPR batches are drawn: "interactions" (every training pair once, shuffled: the
  # release's and LightGCN's) or "users" (len(train) // batch + 1 batches of distinct users drawn
  # uniformly, one positive and one negative each: KGAT's loader; sampling.user_uniform_epoch).
  c.train.cf_sampling = "interactions"
  c.train.max_epochs = 2000
  c.train.patience = 10
  # Early stopping may not end a run before this many epochs: LightGCN's selection metric dips for
  # the first ~8 epochs after its epoch-0 popularity peak (the release has no such floor).
  c.train.min_epochs = 20
  c.train.cf_weight = 1.5
  c.train.l2 = 1e-5
  c.train.max_seconds = 0.0  # wall-time budget (0 = none): stop cleanly, results say so
  c.train.checkpoint = True
  c.train.checkpoint_every_seconds = 60.0  # and always at the end; resume replays exactly
  # A workdir holding a run resumes it if the run's identity matches (README, "Resume rules");
  # False starts afresh there, deleting the old run's checkpoints, metrics and results.
  c.train.resume = True
  c.train.plot = True
  # XLA:GPU's deterministic ops (no atomic scatter-adds): the same seed gives the same run on a GPU,
  # as on the CPU, where it changes nothing; model.backend=auto then propagates with the CSR
  # product (XLA's deterministic scatter-add makes segment_sum very slow). False trades that for
  # the GPU's fastest kernels (docs/results.md, "One seed, one run").
  c.train.deterministic = True
  # The train step as one program per loss part (BPR + L2, contrastive, reconstruction), each
  # adding its gradient into one donated buffer, then the update: the step's peak memory is the
  # largest part's instead of the whole loss's (docs/scaling.md). CIKGRec, on one device or in
  # the graph modes. Same terms; gradients equal to float rounding; slower (the parts do not
  # share work).
  c.train.split_step = False

  # Several devices (README "Several devices"): "data" (pmap: state and graphs replicated, batch
  # split), "graph" (shard_map: edges and node table split by node-row blocks), "data_graph" (a
  # data x graph mesh; data_devices of num_devices split the batch). num_devices: 0 = all local.
  # Configs that still set train.num_devices (its old place) keep working.
  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "data"
  c.parallel.num_devices = 1
  # data_graph only: the "data" axis size, a divisor of num_devices (0 = the largest <= sqrt)
  c.parallel.data_devices = 0
  # graph modes: how a propagation layer's sender rows reach each row block: "all_gather" (all
  # rows to every device), "halo" (only the remote rows a block's edges read, cikg_jax/graphs/halo.py),
  # "auto" (the halo where it moves fewer rows than the all_gather: graphs with locality; on the
  # paper's small-world CIKGs it does not, docs/scaling.md), "ring" (the owners' blocks passed
  # round the devices one at a time: the all_gather's traffic in B rows of memory, for large
  # graphs without locality; bcsr backend), "halo_rounds" (the halo's rows, one owner's per
  # ppermute round: the halo's traffic in H rows of memory; bcsr backend)
  c.parallel.exchange = "all_gather"
  # graph modes: the order of the table's rows, chosen once from the graph and stored with the run
  # (node_order.npz): "identity" (node ids), "balanced" (about E/D edges per block), "rcm"
  # (neighbours together: a small halo where the graph has locality), "degree" (hubs first);
  # cikg_jax/graphs/partition.py, experiments/partition_report.py
  c.parallel.node_order = "identity"
  # Several processes (hosts) in one run: cikg_jax/parallel/distributed.py, README "Several processes and
  # hosts". Unset values come from the cluster environment (Slurm, Open MPI); one process needs none.
  c.parallel.coordinator_address = (
    ""  # host:port of process 0 ("" = JAX_COORDINATOR_ADDRESS/cluster)
  )
  c.parallel.num_processes = 0  # 0 = from the cluster environment (1 outside one)
  c.parallel.process_id = -1  # this process's index, 0..num_processes-1 (-1 = from the cluster)

  # User-interest reconstruction (GraphMAE-style); weight 0 switches it off.
  c.uir = ml_collections.ConfigDict()
  c.uir.weight = 0.03
  c.uir.enc_layers = 2
  c.uir.dec_layers = 1
  c.uir.replace_rate = 0.15
  c.uir.edge_drop = 0.2
  c.uir.gamma = 2.0
  c.uir.schedule = "exp"  # "exp", "lin" or "const"
  c.uir.p0 = 0.05
  c.uir.pmax = 0.75
  c.uir.total_epoch = 150

  # Cross-domain contrastive learning; weight 0 switches it off.
  c.cl = ml_collections.ConfigDict()
  c.cl.weight = 0.01
  c.cl.tau = 0.2
  c.cl.eps = 0.1
  # > 0: InfoNCE denominators over chunks of this many candidate rows, memory (batch x chunk)
  # instead of (batch x candidates); equal to float rounding. For very large graphs.
  c.cl.chunk = 0

  # TransE on KG + interaction triples with its own optimizer, after each epoch's BPR loop.
  c.kge = ml_collections.ConfigDict()
  c.kge.use = True
  c.kge.lr = 0.002
  c.kge.l2 = 1e-3
  c.kge.batch_size = 4096

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (20, 50, 100)
  c.eval.chunk_size = 1024
  c.eval.select_k = 50  # early stopping on recall@k + ndcg@k
  c.eval.n_groups = 4  # user groups by training-interaction count (quantiles)
  return c
