"""KGAT baseline (Wang et al., KDD 2019): attentive propagation over the collaborative knowledge
graph (user-item + KG edges, both directions, typed), bi-interaction aggregator, the layer outputs
concatenated; BPR alternating with TransR (the framework's per-epoch KGE loop, kge.use).

  python -m cikg_jax.main --config=configs/kgat.py:dbbook2014 --workdir=runs/kgat-dbbook2014

Values, the paper's and its code's (xiangwang1223/knowledge_graph_attention_network): embedding
64, relation space 64, layers [64, 32, 16] (RecBole's KGAT.yaml: [64]), message dropout 0.1 per
layer, L2 1e-5 on the CF representations and on the TransR terms (RecBole: reg_weight 1e-5),
batch 1024 (CF) / 2048 (TransR), LeakyReLU slope 0.2 (TF's default, the original's; RecBole's
torch default is 0.01). Learning rate 1e-3 for both losses: RecBole's default; the original's run
commands use 1e-4, which on these data (44 CF steps per dbbook2014 epoch) needs ~10x the epochs.
BPR weight 1. Dataset values (epochs, patience, evaluation) are the dataset config's;
`synthetic` keeps the tiny config's dimension, lr and batch sizes, with layers [32, 16].

What differs from the original code, and why: (1) the attention pi(h, r, t) is recomputed from
the current parameters at every CF step (the original refreshes it once per epoch, and starts from
the degree-normalised adjacency); as there, no BPR gradient flows through it. So the attention is
a pure function of the parameters, and evaluation, resume and prediction need no extra state.
(2) TransR: each epoch the driver samples n_triples // 2048 batches of forward triples (KG and
user -interact-> item) with a corrupted tail from the entity rows; each triple is trained with its
inverse (t, r + R + 1, h) against the same corrupted tail, so every CKG relation, inverses
included, is trained as in KGAT. (3) The framework's node table also holds the (unused) interest
rows. No node dropout (the original's default).
"""

from configs import datasets


def get_config(dataset: str = "dbbook2014"):
  c = datasets.get_config(dataset)
  c.views = "paper"
  c.model.name = "kgat"
  c.model.use_kg_edges = True
  c.model.use_interest_edges = False
  c.model.add_self_loops = False
  c.model.edge_dropout = 0.0
  c.model.message_dropout = 0.0
  c.uir.weight = 0.0
  c.cl.weight = 0.0
  c.kge.use = True  # switched off, with a note, where the dataset has no KG (ml1m)
  c.train.cf_weight = 1.0
  c.train.l2 = 1e-5
  c.kge.l2 = 1e-5
  c.kgat = dict(layers=(64, 32, 16), relation_dim=64, mess_dropout=0.1, negative_slope=0.2)
  if dataset == "synthetic":
    c.kgat.layers, c.kgat.relation_dim = (32, 16), 32
  else:
    c.model.embed_dim = 64
    c.train.lr = 1e-3
    c.train.batch_size = 1024
    c.kge.batch_size = 2048
  c.kge.lr = c.train.lr
  return c
