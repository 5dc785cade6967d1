import os
from pathlib import Path
import warnings

import numpy as np
import pytest

from cikg_jax.data import dataset as dataset_lib
from cikg_jax.data import files, sampling, synthetic


def _write(root, name, text):
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, name), "w") as f:
    f.write(text)


@pytest.fixture()
def toy_dir(tmp_path):
  root = tmp_path / "toy"
  _write(root, "train.txt", "0 0 1 2\n1 2 3\n2 0 4\n")
  _write(root, "test.txt", "0 3\n1 0\n2 1 2\n")
  _write(root, "kg_final.txt", "0 0 5\n1 0 5\n4 1 6\n\n")  # trailing blank line is fine
  _write(root, "user_interest_clustered.txt", "0 7\n1 7\n2 8\n")
  return tmp_path


def test_loads_toy(toy_dir):
  ds = dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")
  assert (ds.n_users, ds.n_items, ds.n_entities, ds.n_relations) == (3, 5, 7, 2)
  assert ds.n_interests == 2 and ds.n_nodes == 3 + 7 + 2
  assert len(ds.train) == 7 and len(ds.test) == 4 and len(ds.valid) == 0


def test_env_var_data_dir(toy_dir, monkeypatch):
  monkeypatch.setenv("CIKG_DATA_DIR", str(toy_dir))
  assert dataset_lib.load_dataset(None, "toy", selection="test").n_users == 3
  monkeypatch.delenv("CIKG_DATA_DIR")
  with pytest.raises(ValueError, match="CIKG_DATA_DIR"):
    dataset_lib.load_dataset(None, "toy")


@pytest.mark.parametrize(
  "name,text,message",
  [
    ("train.txt", "0 0 1\n1 2 x\n", r"train.txt:2: non-integer item id 'x'"),
    ("train.txt", "0 0 1\n\n1 2\n", r"train.txt:2: empty line inside the file"),
    ("train.txt", "0 0 1\n0 2\n", r"train.txt:2: duplicate line for user 0"),
    ("train.txt", "0 0 1\n1 2 2\n", r"train.txt:2: item 2 listed twice for user 1"),
    ("train.txt", "0 0 1\n1\n", r"train.txt:2: user 1 has no items"),
    ("train.txt", "0 0 1\n2 3\n", r"train.txt: user 1 has no training items"),
    ("train.txt", "0 0 -1\n", r"train.txt:1: item id -1 is negative"),
    ("test.txt", "0 1\n", r"test.txt:1: user 0: item 1 is both a training item and a test item"),
    ("test.txt", "0 3\n5 1\n", r"test.txt:2: user 5 has test items but no line"),
    ("kg_final.txt", "0 0 5\n1 0\n", r"kg_final.txt:2: expected 3 integers"),
    (
      "user_interest_clustered.txt",
      "0 3\n",
      r"user_interest_clustered.txt:1: interest id 3 "
      r"collides with the entity range",
    ),
    (
      "user_interest_clustered.txt",
      "9 7\n",
      r"user_interest_clustered.txt:1: user id 9 out of "
      r"range",
    ),
  ],
)
def test_malformed_input_names_file_line_and_problem(toy_dir, name, text, message):
  _write(toy_dir / "toy", name, text)
  if name == "train.txt":
    _write(toy_dir / "toy", "test.txt", "0 3\n")
  with pytest.raises(files.DataFormatError, match=message):
    dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")


def test_item_out_of_range_with_item_list(toy_dir):
  _write(
    toy_dir / "toy",
    "item_list.txt",
    "org_id remap_id name\n" + "".join(f"{i} {i} Book {i}\n" for i in range(4)),
  )
  with pytest.raises(files.DataFormatError, match=r"train.txt:3: item id 4 out of range"):
    dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")


def test_missing_file_and_missing_kg(toy_dir):
  os.remove(toy_dir / "toy" / "kg_final.txt")
  with pytest.warns(UserWarning, match="kg_final.txt not found: training without item-side"):
    ds = dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")
  assert not ds.has_kg and ds.n_relations == 0
  os.remove(toy_dir / "toy" / "test.txt")
  with pytest.raises(files.DataFormatError, match="test.txt: file not found"):
    dataset_lib.load_dataset(str(toy_dir), "toy")


def test_duplicate_interest_lines_warn(toy_dir):
  _write(toy_dir / "toy", "user_interest_clustered.txt", "0 7\n0 7\n")
  with pytest.warns(UserWarning, match="1 duplicate lines ignored"):
    ds = dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")
  assert len(ds.user_interest) == 1


def test_validation_split_is_seeded_disjoint_and_one_eighth(data_dir):
  a = dataset_lib.load_dataset(data_dir, "dbbook2014", selection="valid", seed=1)
  b = dataset_lib.load_dataset(data_dir, "dbbook2014", selection="valid", seed=1)
  c = dataset_lib.load_dataset(data_dir, "dbbook2014", selection="valid", seed=2)
  full = dataset_lib.load_dataset(data_dir, "dbbook2014", selection="test")
  assert np.array_equal(a.valid, b.valid) and not np.array_equal(a.valid, c.valid)
  assert len(a.train) + len(a.valid) == len(full.train) == 50745
  key = lambda p: set(map(tuple, p.tolist()))
  assert key(a.train) | key(a.valid) == key(full.train)
  assert not key(a.train) & key(a.valid)
  assert 0.10 < len(a.valid) / len(full.train) < 0.14
  assert np.all(np.bincount(a.train[:, 0], minlength=a.n_users) >= 1)


def test_paper_dataset_statistics(data_dir):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ds = dataset_lib.load_dataset(data_dir, "book-crossing", selection="test")
  assert (ds.n_users, ds.n_items, ds.n_entities) == (6616, 8853, 9526)
  assert (len(ds.train), len(ds.test), len(ds.kg)) == (85989, 24673, 1137)
  assert ds.interest_offset + ds.n_interests == ds.n_users + 9776  # ids up to 9775 covered
  assert len(np.unique(ds.user_interest[:, 0])) == 6575


def test_negative_sampler_never_returns_a_positive():
  rng = np.random.default_rng(0)
  n_users, n_items = 50, 12
  pairs = np.array(
    [
      (u, i)
      for u in range(n_users)
      for i in rng.choice(n_items, size=rng.integers(1, n_items), replace=False)
    ]
  )
  sampler = sampling.NegativeSampler(pairs, n_users, n_items)
  users = np.repeat(np.arange(n_users), 200)
  neg = sampler.sample(users, np.random.default_rng(1))
  positives = set(map(tuple, pairs.tolist()))
  assert not any((u, j) in positives for u, j in zip(users.tolist(), neg.tolist()))
  again = sampler.sample(users, np.random.default_rng(1))
  assert np.array_equal(neg, again)  # seeded
  with pytest.raises(ValueError, match="every item"):
    sampling.NegativeSampler(np.array([(0, 0), (0, 1)]), 1, 2)


def test_bpr_epoch_visits_every_interaction_once():
  pairs = np.array([(u, i) for u in range(7) for i in range(u % 3 + 1)])
  sampler = sampling.NegativeSampler(pairs, 7, 5)
  ep = sampling.bpr_epoch(pairs, sampler, 4, np.random.default_rng(0))
  assert ep["users"].shape == (4, 4)
  m = ep["mask"].reshape(-1) > 0
  got = sorted(zip(ep["users"].reshape(-1)[m].tolist(), ep["pos"].reshape(-1)[m].tolist()))
  assert got == sorted(map(tuple, pairs.tolist()))


def test_user_uniform_epoch_draws_distinct_users_uniformly_as_kgat_does():
  """KGAT's CF batches: n // batch + 1 batches of distinct users (only users with items), each
  user equally likely however many items they have, a positive of theirs and a negative each."""
  # user 0 has 20 items, users 1..9 one each, user 10 none: 29 pairs
  pairs = np.array([(0, i) for i in range(20)] + [(u, u) for u in range(1, 10)])
  sampler = sampling.NegativeSampler(pairs, 11, 30)
  counts = np.zeros(11)
  for seed in range(300):
    ep = sampling.user_uniform_epoch(pairs, sampler, 4, np.random.default_rng(seed))
    assert ep["users"].shape == (29 // 4 + 1, 4) == (8, 4)
    assert (ep["mask"] == 1).all()
    assert all(len(set(row)) == 4 for row in ep["users"].tolist())  # distinct within a batch
    positives = set(map(tuple, pairs.tolist()))
    u, i, j = (ep[k].reshape(-1).tolist() for k in ("users", "pos", "neg"))
    assert all((a, b) in positives for a, b in zip(u, i))
    assert not any((a, b) in positives for a, b in zip(u, j))
    counts += np.bincount(ep["users"].reshape(-1), minlength=11)
  assert counts[10] == 0
  share = counts[:10] / counts.sum()  # each of the 10 users ~1/10 (bpr_epoch: user 0 20/29)
  assert np.allclose(share, 0.1, atol=0.01), share
  more = sampling.user_uniform_epoch(pairs, sampler, 16, np.random.default_rng(0))
  assert more["users"].shape == (2, 16)  # more than the 10 users: drawn with replacement
  assert (
    sampling.cf_batches("users", 29, 4) == 8 and sampling.cf_batches("interactions", 29, 4) == 8
  )
  assert (
    sampling.cf_batches("users", 28, 4) == 8 and sampling.cf_batches("interactions", 28, 4) == 7
  )


def test_synthetic_dataset_round_trips_through_the_loader(tmp_path):
  d = synthetic.ensure(str(tmp_path), n_users=40, n_items=30)
  ds = dataset_lib.load_dataset(d, "synthetic")
  assert ds.n_users == 40 and ds.n_items == 30 and ds.has_kg and ds.n_interests > 0


def test_kge_triples_paper_and_release(toy_dir):
  ds = dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")
  n_u, r = ds.n_users, ds.n_relations
  paper, n_steps_base = sampling.kge_triples(ds, "paper")
  assert n_steps_base is None and len(paper) == len(ds.kg) + len(ds.train)
  assert sampling.kge_relation_count(ds, "paper") == r + 1
  assert (0 + n_u, 0, 5 + n_u) in set(map(tuple, paper.tolist()))  # KG triple, node rows
  assert (0, r, 0 + n_u) in set(map(tuple, paper.tolist()))  # user 0 interacts item 0
  rel, base = sampling.kge_triples(ds, "release")
  got = set(map(tuple, rel.tolist()))
  assert base == 2 * len(ds.kg) and len(rel) == 2 * len(ds.kg) + 2 * len(ds.train)
  assert (5 + n_u, 0 + r, 0 + n_u) in got  # inverse KG triple
  assert (0, 2 * r, n_u) in got and (n_u, 2 * r + 1, 0) in got  # interact both ways
  assert sampling.kge_relation_count(ds, "release") == 2 * r + 2
  assert rel[:, 1].max() < sampling.kge_relation_count(ds, "release")


# ---- reliability: BOM, list files, interest id ranges, shipped sizes ---------------------------


@pytest.mark.parametrize(
  "name",
  [
    "train.txt",
    "test.txt",
    "kg_final.txt",
    "user_interest_clustered.txt",
    "item_list.txt",
    "entity_list.txt",
  ],
)
def test_utf8_bom_and_crlf_are_accepted(toy_dir, name):
  root = toy_dir / "toy"
  _write(
    root,
    "item_list.txt",
    "org_id remap_id item_name\n" + "".join(f"i{i} {i} Book {i}\n" for i in range(5)),
  )
  _write(
    root,
    "entity_list.txt",
    "org_id remap_id\n" + "".join(f"{'i' if e < 5 else 'e'}{e} {e}\n" for e in range(7)),
  )
  before = dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")
  path = root / name
  data = path.read_bytes().replace(b"\n", b"\r\n")
  path.write_bytes(b"\xef\xbb\xbf" + data)
  after = dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")
  for field in ("train", "test", "kg", "user_interest"):
    assert np.array_equal(getattr(before, field), getattr(after, field)), field
  assert (after.n_items, after.n_entities, after.n_interests) == (5, 7, 2)


def _with_lists(toy_dir, items, entities=None):
  _write(toy_dir / "toy", "item_list.txt", items)
  if entities is not None:
    _write(toy_dir / "toy", "entity_list.txt", entities)
  return lambda: dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")


ITEMS = "org_id remap_id item_name\n" + "".join(f"i{i} {i} Book {i}\n" for i in range(5))


@pytest.mark.parametrize(
  "items,message",
  [
    (ITEMS + "i4 4 Book 4\n", r"item_list.txt:7: remap_id 4 already on line 6"),
    (ITEMS + "i5 x\n", r"item_list.txt:7: remap_id 'x' is not an integer"),
    (ITEMS + "i5 -5\n", r"item_list.txt:7: remap_id -5 is negative"),
    (
      ITEMS + "i9 9 Far\n",
      r"item_list.txt:7: remap_id 9 out of range: the file has 6 entries, "
      r"so remap ids must be 0..5 each once \(5 is missing\)",
    ),
    (ITEMS.replace("i2 2 Book 2\n", ""), r"item_list.txt:5: remap_id 4 out of range.*2 is missing"),
    (ITEMS.replace("org_id remap_id item_name\n", ""), r"item_list.txt:1: expected the header"),
    (ITEMS + "i5\n", r"item_list.txt:7: expected 'org_id remap_id \[name\]'"),
  ],
  ids=["duplicate", "non-integer", "negative", "out-of-range", "gap", "no-header", "no-remap"],
)
def test_item_list_is_validated_not_just_counted(toy_dir, items, message):
  with pytest.raises(files.DataFormatError, match=message):
    _with_lists(toy_dir, items)()


def test_item_list_names_may_have_spaces_or_be_absent(toy_dir):
  load = _with_lists(
    toy_dir, "org_id remap_id item_name\ni0 0 A  long\tname\ni1 1\ni2 2 None\ni3 3 x\ni4 4 y\n"
  )
  assert load().n_items == 5
  got = files.read_id_list(str(toy_dir / "toy" / "item_list.txt"))
  assert got.org_ids[:2] == ["i0", "i1"] and got.names[:3] == ["A  long\tname", None, "None"]
  assert got.keys(2) == {"i2"}


def test_entity_list_is_validated_and_aligned_with_item_list(toy_dir):
  entities = "org_id remap_id\n" + "".join(f"i{e} {e}\n" for e in range(7))
  assert _with_lists(toy_dir, ITEMS, entities)().n_entities == 7
  with pytest.raises(
    files.DataFormatError, match=r"entity_list.txt:9: remap_id 6 already on line 8"
  ):
    _with_lists(toy_dir, ITEMS, entities + "x 6\n")()
  # items numbered differently from the KG entities: item i must be entity i
  shifted = "org_id remap_id\n" + "".join(f"i{(e + 1) % 7} {e}\n" for e in range(7))
  with pytest.raises(
    files.DataFormatError,
    match=r"item_list.txt:2: item 0 \(Book 0 / i0\) is not "
    r"entity 0 of .*entity_list.txt:2 \(i1\); 5 of 5 items disagree",
  ):
    _with_lists(toy_dir, ITEMS, shifted)()
  # the URI/title of an item may be the entity's org id (dbbook2014, ml1m, KGAT's freebase ids)
  by_name = "org_id remap_id\n" + "".join(f"{'Book_' if e < 5 else 'e'}{e} {e}\n" for e in range(7))
  _with_lists(toy_dir, ITEMS.replace("Book ", "Book_"), by_name)()
  with pytest.raises(files.DataFormatError, match=r"5 items but .*entity_list.txt lists only 4"):
    _with_lists(toy_dir, ITEMS, "org_id remap_id\n" + "".join(f"i{e} {e}\n" for e in range(4)))()


def test_stray_interest_id_is_refused_with_its_line(toy_dir):
  _write(toy_dir / "toy", "user_interest_clustered.txt", "0 7\n1 7\n2 8\n0 5000000\n1 8\n")
  with pytest.raises(
    files.DataFormatError,
    match=r"user_interest_clustered.txt:4: interest id "
    r"5000000 would size the interest table to 4,999,994 rows of which only 3 are "
    r"used; the other ids lie in 7..8",
  ):
    dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")
  # a small gap (book-crossing leaves 5 ids unused) is fine
  _write(toy_dir / "toy", "user_interest_clustered.txt", "0 7\n1 40\n2 8\n")
  assert dataset_lib.load_dataset(str(toy_dir), "toy", selection="test").n_interests == 34


SHIPPED = {  # users items entities relations interest-rows train test kg user-interest
  "dbbook2014": (5576, 2680, 8908, 13, 544, 50745, 15216, 134223, 6961),
  "book-crossing": (6616, 8853, 9526, 4, 250, 85989, 24673, 1137, 19497),
  "ml1m": (6040, 3260, 14703, 0, 550, 796389, 202150, 0, 2204),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_datasets_sizes_unchanged(data_dir, name):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ds = dataset_lib.load_dataset(data_dir, name, selection="test")
  assert (
    ds.n_users,
    ds.n_items,
    ds.n_entities,
    ds.n_relations,
    ds.n_interests,
    len(ds.train),
    len(ds.test),
    len(ds.kg),
    len(ds.user_interest),
  ) == SHIPPED[name]
  items = files.read_id_list(os.path.join(data_dir, name, "item_list.txt"))
  assert len(items) == ds.n_items


def test_inference_reads_item_list_and_histories_with_the_data_readers(tmp_path):
  from inference import history

  assert history.DataFileError is files.DataFormatError
  p = tmp_path / "item_list.txt"
  p.write_text("org_id remap_id item_name\n10 0 http://x.org/resource/A_b\n11 1\n12 5 C\n")
  with pytest.raises(files.DataFormatError, match=r"item_list.txt:4: remap_id 5 out of range"):
    history.read_item_titles(p)
  p.write_bytes(b"\xef\xbb\xbforg_id remap_id item_name\r\n10 0 A  b\r\n11 1 None\r\n")
  assert history.read_item_titles(p) == {0: "A b"}
  t = tmp_path / "train.txt"
  for text, message in [
    ("0 1 1\n", r"train.txt:1: item 1 listed twice for user 0"),
    ("0 1\n\n1 2\n", r"train.txt:2: empty line inside the file"),
  ]:
    t.write_text(text)
    with pytest.raises(files.DataFormatError, match=message):
      history.read_user_items(t)
  t.write_text("0 3 1\n1\n")  # a user line without items (a validation file) is fine
  assert history.read_user_items(t) == {0: [3, 1], 1: []}


def test_inference_max_entity_id_reads_entity_names_with_spaces(tmp_path, data_dir):
  from inference.structure import max_entity_id

  (tmp_path / "entity_list.txt").write_text(
    "org_id remap_id entity_name\n0 0 Clara Callan\n4 1 Our Dumb Century\n7 2\n"
  )
  # max_entity_id loads the dataset as the trainer does, so it needs the interactions too
  (tmp_path / "train.txt").write_text("0 0 1\n1 1\n")
  (tmp_path / "test.txt").write_text("0 2\n")
  assert max_entity_id(tmp_path) == 2
  assert max_entity_id(Path(data_dir) / "book-crossing") == 9525


@pytest.mark.parametrize("token", ["1_0", "+12", "\u0661\u0662", "\uff11", "1.0"])
def test_ids_are_ascii_digits_only(toy_dir, token):
  _write(toy_dir / "toy", "train.txt", f"0 0 1\n1 2 {token}\n")
  _write(toy_dir / "toy", "test.txt", "0 3\n")
  with pytest.raises(files.DataFormatError, match=r"train.txt:2: non-integer item id .*ASCII"):
    dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")


def test_fields_split_at_ascii_space_and_tab_only(toy_dir):
  """A URI holding U+00A0 (or another Unicode space) stays one field in every list file."""
  uri = "http://dbpedia.org/resource/Le\u00a0Petit\u2009Prince"
  items = "org_id remap_id item_name\n" + "".join(
    f"i{i}\t{i} {uri if i == 1 else f'Book {i}'}\n" for i in range(5)
  )
  entities = items.replace("item_name", "entity_name") + "e5 5\ne6 6\n"
  _with_lists(toy_dir, items, entities)()
  got = files.read_id_list(str(toy_dir / "toy" / "item_list.txt"))
  assert got.names[1] == uri and got.org_ids[1] == "i1"
  assert files.split_fields(" a\u00a0b\tc  d ") == ["a\u00a0b", "c", "d"]
  assert files.split_fields("x\u00a0 1", maxsplit=1) == ["x\u00a0", "1"]
  # a U+00A0 in an id column is a wrong id, not a separator
  _write(toy_dir / "toy", "train.txt", "0 0 1 2\n1 2\u00a03\n2 0 4\n")
  with pytest.raises(files.DataFormatError, match=r"train.txt:2: non-integer item id '2\\xa03'"):
    dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")


@pytest.mark.parametrize(
  "data,where",
  [
    (b"0 0 1\n1 2 3\n2 0 4 \xe9t\xe9\n", r"train.txt:3: byte 0xe9 at byte offset 18 is not UTF-8"),
    (b"0 0 1\n\x89PNG\r\n\x1a\n", r"train.txt:2: byte 0x89 at byte offset 6 is not UTF-8"),
  ],
  ids=["latin1", "binary"],
)
def test_non_utf8_bytes_name_line_and_byte_offset(toy_dir, data, where):
  (toy_dir / "toy" / "train.txt").write_bytes(data)
  with pytest.raises(files.DataFormatError, match=where + r"; data files must be UTF-8") as e:
    dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "name,text,message",
  [
    (
      "kg_final.txt",
      "0 0 5\n1 0 5\n4 3000000 6\n",
      r"kg_final.txt:3: relation id 3000000 would size the relation table to 3,000,001 rows",
    ),
    (
      "kg_final.txt",
      "0 0 5\n1 0 5\n4 1 5000000\n",
      r"kg_final.txt:3: entity id 5000000 would size the entity table",
    ),
    (
      "train.txt",
      "0 0 1 2\n1 2 3\n2 0 4\n1000000000000 1\n",
      r"train.txt: user 3 has no training items.*1000000000000 on line 4",
    ),
    (
      "train.txt",
      "0 0 1 2\n1 2 1000000000\n2 0 4\n",
      r"train.txt:2: item id 1000000000 would size the item table",
    ),
    ("test.txt", "", r"test.txt: no test interactions"),
    ("test.txt", "0\n1\n", r"test.txt: no test interactions"),
    (  # the KG's largest entity (7) ends the entity range: its line is named
      "kg_final.txt",
      "0 0 5\n1 0 5\n4 1 7\n",
      r"user_interest_clustered.txt:1: interest id 7 collides with the entity range \(ids < 8; "
      r"the largest KG entity id, 7, is on .*kg_final.txt:3\)",
    ),
  ],
)
def test_ids_are_checked_against_the_files_own_evidence_before_allocating(
  toy_dir, name, text, message
):
  _write(toy_dir / "toy", name, text)
  with pytest.raises(files.DataFormatError, match=message):
    dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")


@pytest.mark.parametrize("name", ["kg_final.txt", "user_interest_clustered.txt", "entity_list.txt"])
@pytest.mark.parametrize("link", ["loop", "dangling"])
def test_a_data_file_that_is_a_broken_symlink_is_an_error_not_absent(toy_dir, name, link):
  path = toy_dir / "toy" / name
  if path.exists():
    path.unlink()
  if link == "loop":
    os.symlink(path, path)
  else:
    os.symlink(toy_dir / "nowhere", path)
  with pytest.raises(files.DataFormatError, match=rf"{name}: a symbolic link that leads nowhere"):
    dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")


@pytest.mark.parametrize("name", ["train.txt", "test.txt"])
def test_a_last_line_without_line_end_warns_that_the_file_may_be_cut(toy_dir, name):
  text = (toy_dir / "toy" / name).read_text()
  _write(toy_dir / "toy", name, text[:-3])  # cut inside the last line
  with pytest.warns(UserWarning, match=rf"{name}:3: the last line has no line end"):
    dataset_lib.load_dataset(str(toy_dir), "toy", selection="test")


def test_synthetic_folder_made_with_other_sizes_is_refused(tmp_path):
  synthetic.ensure(str(tmp_path), n_users=40, n_items=100, seed=0)
  synthetic.ensure(str(tmp_path), n_users=40, n_items=100, seed=0)  # the same: reused
  with pytest.raises(ValueError, match=r"other settings \(synthetic.n_users 40 -> 25\)"):
    synthetic.ensure(str(tmp_path), n_users=25, n_items=100, seed=0)
