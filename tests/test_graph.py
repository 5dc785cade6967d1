import numpy as np
import pytest

from cikg_jax.data import dataset as dataset_lib
from cikg_jax.graphs import cikg as graph_lib
from tests.test_data import _write


@pytest.fixture()
def toy(tmp_path):
  root = tmp_path / "toy"
  # 2 users, 3 items, entities 0..4 (3, 4 non-item), interests 5, 6
  _write(root, "train.txt", "0 0 1\n1 1 2\n")
  _write(root, "test.txt", "0 2\n1 0\n")
  _write(root, "kg_final.txt", "0 0 3\n3 1 0\n1 0 4\n4 0 4\n")  # a duplicate pair + a KG self loop
  _write(root, "user_interest_clustered.txt", "0 5\n1 5\n1 6\n")
  return dataset_lib.load_dataset(str(tmp_path), "toy", selection="test")


def _edges(g):
  return set(zip(np.asarray(g.senders).tolist(), np.asarray(g.receivers).tolist()))


def test_toy_cikg_and_views(toy):
  ds = toy
  assert ds.n_nodes == 2 + 5 + 2
  gs = graph_lib.build_graphs(ds, views="paper")
  # node rows: users 0,1; items 2,3,4; entities 5,6; interests 7,8
  ui = {(0, 2), (0, 3), (1, 3), (1, 4)}
  kg = {(2, 5), (3, 6), (6, 6)}
  uint = {(0, 7), (1, 7), (1, 8)}
  both = lambda s: {(a, b) for a, b in s} | {(b, a) for a, b in s}
  loops = {(n, n) for n in range(9)}
  assert _edges(gs["cikg_no_loops"]) == both(ui | kg | uint)
  assert int(gs["cikg_no_loops"].n_edge[0]) == 2 * 9 + 1  # the KG self loop is one edge
  assert int(gs["cikg"].n_edge[0]) == 19 + 9  # ... and the added loop comes on top of it
  assert _edges(gs["cikg"]) == both(ui | kg | uint) | loops
  # paper views: plain edge sets, self loops belong to the main graph only
  assert _edges(gs["cf"]) == both(ui)
  assert _edges(gs["interest"]) == both(uint | ui)
  assert _edges(gs["kg"]) == both(kg | ui)
  rel = graph_lib.build_graphs(ds, views="release")
  cf_loops = {(n, n) for n in range(5)}  # users + items
  assert rel["cf"] is rel["cikg_no_loops"]  # the release's aliased CIKG edge list, no loops
  assert _edges(rel["interest"]) == both(uint) | cf_loops
  assert _edges(rel["kg"]) == both(kg) | cf_loops
  # receiver-sorted, with shared pair ids for both directions
  r = np.asarray(gs["cikg"].receivers)
  assert np.all(np.diff(r) >= 0)
  no_kg = graph_lib.build_graphs(ds, use_kg_edges=False, use_interest_edges=False)
  assert _edges(no_kg["cikg_no_loops"]) == both(ui)


def test_dbbook_release_edge_counts(data_dir):
  import warnings

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ds = dataset_lib.load_dataset(data_dir, "dbbook2014", selection="test")
  gs = graph_lib.build_graphs(ds, views="release")
  assert int(gs["cikg_no_loops"].n_edge[0]) == 354_205  # the release's unique directed edges
  assert int(gs["cikg"].n_edge[0]) == 354_205 + ds.n_nodes
  assert int(gs["interest"].n_edge[0]) == 2 * 6961 + ds.n_users + ds.n_items


def test_release_masks_the_interest_id_range(data_dir):
  import warnings

  from cikg_jax.training import steps
  from configs import book_crossing

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ds = dataset_lib.load_dataset(data_dir, "book-crossing", selection="test")
  c = book_crossing.get_config()
  c.cl.weight = 0.0
  gs = graph_lib.build_graphs(ds, views="release")
  c.views = "release"
  assert steps.make_graphs(gs, ds, c).interest_rows.shape[0] == 245  # ids 9531..9775 (§7.5)
  c.views = "paper"
  assert steps.make_graphs(gs, ds, c).interest_rows.shape[0] == 244  # ids with edges
