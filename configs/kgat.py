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
BPR weight 1. Dataset values (epochs, evaluation) are the dataset config's;
`synthetic` keeps the tiny config's dimension, lr and batch sizes, with layers [32, 16].

Trained as the original code trains it (Model/Main.py, Model/utility/loader_kgat.py):
- initialisers: Glorot-uniform with TensorFlow's fans (tf.contrib xavier_initializer), so W_r
  [n_relations, 64, 64] has the bound sqrt(6 / (2 * 64 * n_relations)), and the user and entity
  rows are two tables with a bound each, and the layers' biases are drawn like [1, out] weights
  (baselines.W_R_INIT, kgat_node_init, kgat_bias_init);
- CF batches: n_train // 1024 + 1 per epoch, each of 1024 distinct users drawn uniformly, one of
  the user's items and a negative item each (its `_generate_train_cf_batch`; train.cf_sampling
  "users"), so every user weighs the same in an epoch however many items they have;
- the attention A_in starts as the per-relation random-walk normalised adjacency (1 / deg_r(h),
  its default adj_type 'si') and is refreshed once per epoch, after TransR, from the parameters;
  no BPR gradient flows through it (baselines.KGAT.epoch_graphs);
- TransR batches: a head uniformly among the CKG's heads, one of its triples (inverse relations
  included), a negative tail uniformly among the user and entity rows that is no triple of (h, r)
  (filtered), len(CKG triples) // 2048 + 1 batches per epoch (baselines.KGATTripleSampler);
- pretraining (`kgat.pretrain`, off by default as in the original's parser): the user and item rows
  start from a BPR-MF run's (this framework's LightGCN with model.num_layers=0, or the original's
  .npz), as its authors recommend;
- early stopping: the original evaluates every 10th epoch and stops after 5 evaluations without a
  gain (its code's flag_step=5; its comment says ten), i.e. 50 epochs; here every epoch is
  evaluated and the patience is those 50 epochs (train.patience).
Whose value each is: embedding 64, layers [64, 32, 16], message dropout 0.1, L2 1e-5 (CF and
TransR), batches 1024 / 2048, LeakyReLU 0.2, patience: the original's; lr 1e-3: RecBole's (above).
Checked against an independent KGAT (LunaBlack/KGAT-pytorch given the original's slope and
initialisers) on dbbook2014's split: equal settings, test curves epoch by epoch
(experiments/kgat_reference.py, experiments/results/kgat_reference/); the CF batches, the
initialisers and the biases above come from that comparison.
What differs: the framework's node table also holds the (unused) interest rows; no node dropout
(the original's default); validation selection on Recall@50 + NDCG@50 as every model here (the
original stops on test Recall@20).

  python -m cikg_jax.main --config=configs/lightgcn.py:dbbook2014 --config.model.num_layers=0 \
    --workdir=runs/bprmf-dbbook2014
  python -m cikg_jax.main --config=configs/kgat.py:dbbook2014 \
    --config.kgat.pretrain=runs/bprmf-dbbook2014 --workdir=runs/kgat-pretrained-dbbook2014
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
  c.kgat = dict(
    layers=(64, 32, 16), relation_dim=64, mess_dropout=0.1, negative_slope=0.2, pretrain=""
  )
  c.train.patience = 50  # the original's 5 evaluations, one every 10 epochs
  c.train.cf_sampling = "users"  # the original's CF batches (its _generate_train_cf_batch)
  if dataset == "synthetic":
    c.kgat.layers, c.kgat.relation_dim = (32, 16), 32
  else:
    c.model.embed_dim = 64
    c.train.lr = 1e-3
    c.train.batch_size = 1024
    c.kge.batch_size = 2048
  c.kge.lr = c.train.lr
  return c
