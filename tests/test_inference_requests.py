"""Histories, titles, prompts and OpenAI-Batch request files."""

import json
import os
from pathlib import Path

import pytest

from inference.history import (
  DataFileError,
  exclude_items,
  last_titles,
  read_item_titles,
  read_user_items,
  uri_to_title,
)
from inference.prompts import TEMPLATES, get_template
from inference.requests import (
  batch_output_to_records,
  build_requests,
  custom_id,
  read_requests,
  uid_of,
  write_jsonl,
)

TINY = Path(__file__).parent / "inference_fixtures" / "tiny"
SHARED = Path(
  os.environ.get("CIKG_DATA_DIR") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
)
BODY = {"model": "m", "temperature": 0.0, "max_tokens": 32, "seed": 1}


def test_uri_to_title():
  assert uri_to_title("http://dbpedia.org/resource/Where's_My_Cow%3F") == "Where's My Cow?"
  assert (
    uri_to_title("http://dbpedia.org/resource/The_Fiery_Cross_(novel)") == "The Fiery Cross (novel)"
  )
  assert (
    uri_to_title("http://dbpedia.org/resource/The_Fiery_Cross_(novel)", True) == "The Fiery Cross"
  )
  assert uri_to_title("Clara Callan") == "Clara Callan"
  assert uri_to_title("None") is None and uri_to_title("  ") is None


def test_read_item_titles_skips_nameless(tmp_path):
  titles = read_item_titles(TINY / "item_list.txt")
  assert 5 not in titles and 17 not in titles and titles[3] == "Book 3 Title?"
  p = tmp_path / "item_list.txt"
  p.write_text("org_id remap_id item_name\n0002005018 0 Clara Callan, a novel\n0609 1\nx y z\n")
  with pytest.raises(DataFileError, match=r"item_list.txt:4: remap_id 'y'"):
    read_item_titles(p)


def test_read_user_items_keeps_order_and_names_bad_line(tmp_path):
  h = read_user_items(TINY / "train.txt")
  first = (TINY / "train.txt").read_text().splitlines()[0].split()
  assert h[0] == [int(x) for x in first[1:]]
  p = tmp_path / "train.txt"
  p.write_text("0 1 2\n1 3 x\n")
  with pytest.raises(DataFileError, match=r"train.txt:2: non-integer"):
    read_user_items(p)


def test_last_window_and_nameless_dropped_after_window():
  titles = {i: f"t{i}" for i in range(100) if i != 98}
  assert last_titles(list(range(100)), titles, 3) == ["t97", "t99"]
  assert last_titles([1, 2], titles, 30) == ["t1", "t2"]


def test_requests_use_only_last_30_training_items_never_valid_or_test():
  train, test = read_user_items(TINY / "train.txt"), read_user_items(TINY / "test.txt")
  # a validation split carved from train: the last 2 train items of every user
  valid = {u: items[-2:] for u, items in train.items()}
  fit = exclude_items(train, valid)
  titles = read_item_titles(TINY / "item_list.txt")
  reqs = build_requests(fit, titles, get_template("release-v1"), "books", BODY)
  by_uid = {uid_of(r["custom_id"]): r for r in reqs}
  assert len(train[0]) > 32  # the fixture exercises the window
  for u, items in fit.items():
    content = by_uid[u]["body"]["messages"][1]["content"]
    shown = content[1:-1].split(", ")
    assert shown == [titles[i] for i in items[-30:] if i in titles]
    for i in valid[u] + test[u]:
      assert titles.get(i, "<none>") not in shown, (u, i)


def test_request_format_is_openai_batch(tmp_path):
  h = {3: [1, 2], 7: [5]}  # user 7 has only a nameless item: no request
  reqs = build_requests(h, {1: "A", 2: "B, with comma"}, get_template("release-v1"), "movies", BODY)
  assert [r["custom_id"] for r in reqs] == ["user-3"]
  r = reqs[0]
  assert r["method"] == "POST" and r["url"] == "/v1/chat/completions"
  assert r["body"]["model"] == "m" and r["body"]["seed"] == 1
  sys_msg, user_msg = r["body"]["messages"]
  assert "list of movies an anonymous user has liked" in sys_msg["content"]
  assert user_msg == {"role": "user", "content": "[A, B, with comma]"}
  n = write_jsonl(tmp_path / "req.jsonl", reqs)
  assert n == 1 and read_requests(tmp_path / "req.jsonl") == reqs
  (tmp_path / "dup.jsonl").write_text("\n".join(json.dumps(r) for r in reqs * 2))
  with pytest.raises(ValueError, match="duplicate custom_id"):
    read_requests(tmp_path / "dup.jsonl")
  with pytest.raises(ValueError, match="messages"):
    build_requests(h, {}, get_template("release-v1"), "books", {"messages": []})


def test_release_prompt_wording_and_template_versions():
  t = get_template("release-v1")
  sys_text = t.messages(["x"], "books")[0]["content"]
  assert sys_text == (
    "You will be provided with a list of books an anonymous user has liked, and your task is to "
    "infer the user's interests based on the list and your extensive knowledge. List no more than "
    "five the top interests of this anonymous user. No further explanation is needed. Please use a "
    "comma to split the interests."
  )
  digests = {n: tt.digest() for n, tt in TEMPLATES.items()}
  assert len(set(digests.values())) == len(digests)
  assert t.digest() == get_template("release-v1").digest()
  with pytest.raises(ValueError, match="known"):
    get_template("nope")
  with pytest.raises(ValueError, match="domain"):
    t.messages(["x"], "songs")


def test_custom_id_roundtrip():
  assert uid_of(custom_id(42)) == 42
  with pytest.raises(ValueError):
    uid_of("42")


def test_batch_output_import(tmp_path):
  rows = [
    {
      "id": "a",
      "custom_id": "user-1",
      "response": {
        "status_code": 200,
        "body": {
          "model": "m",
          "choices": [{"message": {"content": "x, y"}, "finish_reason": "stop"}],
          "usage": {},
        },
      },
      "error": None,
    },
    {"id": "b", "custom_id": "user-2", "response": None, "error": {"message": "bad"}},
  ]
  write_jsonl(tmp_path / "o.jsonl", rows)
  recs = batch_output_to_records(tmp_path / "o.jsonl")
  assert recs[0]["ok"] and recs[0]["text"] == "x, y" and not recs[1]["ok"]


@pytest.mark.skipif(
  not (SHARED / "dbbook2014" / "train.txt").exists(), reason="shared data not present"
)
def test_real_dbbook_requests_exclude_test_items():
  d = SHARED / "dbbook2014"
  train, test = read_user_items(d / "train.txt"), read_user_items(d / "test.txt")
  titles = read_item_titles(d / "item_list.txt")
  assert len(titles) == 2680 - 122  # 122 'None' items
  marked = {i: f"<{i}>" for i in titles}  # unique marker per item, so titles cannot collide
  reqs = build_requests(train, marked, get_template("release-v1"), "books", BODY)
  assert len(reqs) > 5500
  for r in reqs:
    u = uid_of(r["custom_id"])
    shown = {int(x.strip("<>")) for x in r["body"]["messages"][1]["content"][1:-1].split(", ")}
    assert shown <= set(train[u][-30:]) and not shown & set(test.get(u, []))


def test_generate_make_requests_honours_valid_file_and_limit(tmp_path):
  import importlib.util

  from inference import generate

  spec = importlib.util.spec_from_file_location(
    "cfg", Path(__file__).resolve().parents[1] / "configs/llm/smollm2_cpu.py"
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  train = read_user_items(TINY / "train.txt")
  valid = {u: items[-3:] for u, items in train.items()}
  (tmp_path / "valid.txt").write_text(
    "".join(f"{u} {' '.join(map(str, v))}\n" for u, v in valid.items())
  )
  c.data_dir, c.dataset, c.prompt.domain = str(TINY.parent), "tiny", "books"
  c.valid_file, c.limit = str(tmp_path / "valid.txt"), 5
  reqs = generate.make_requests(c)
  titles = read_item_titles(TINY / "item_list.txt")
  left = exclude_items(train, valid)
  expected = [u for u in sorted(left) if any(i in titles for i in left[u][-30:])][:5]
  assert 1 not in expected  # user 1's 3 training items are all held out: no request
  assert [r["custom_id"] for r in reqs] == [f"user-{u}" for u in expected]
  for r in reqs:
    u = uid_of(r["custom_id"])
    shown = r["body"]["messages"][1]["content"][1:-1].split(", ")
    assert not {titles.get(i) for i in valid[u]} & set(shown)
    assert (
      r["body"]["temperature"] == c.sampling.temperature
      and r["body"]["model"] == c.model.served_name
    )
  c.structured_outputs = True
  assert "json" in generate.request_body(c)["structured_outputs"]
