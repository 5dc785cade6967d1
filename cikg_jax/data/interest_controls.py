"""Control interest graphs for the user-side-knowledge study: the same interest-node id range and
edge count as the real LLM interests, with their information removed, so a gain of the real
interests over these controls is the interests' content and not extra nodes, edges or degrees.

  shuffled  the interest column of the edge list permuted: every user keeps their number of
            interests and every node its number of users, but who has which interest is random
  random    as many edges between uniformly random users and uniformly random used interest
            nodes: the counts of nodes and edges are kept, the degree structure is not
"""

from __future__ import annotations

import numpy as np

CONTROLS = ("", "shuffled", "random")


def apply(user_interest: np.ndarray, n_users: int, control: str, seed: int) -> np.ndarray:
  """(n, 2) [user, interest id] edges of `control` ("" returns the edges unchanged)."""
  if control not in CONTROLS:
    raise ValueError(f"interest_control must be one of {CONTROLS}, got {control!r}")
  if not control or len(user_interest) == 0:
    return user_interest
  rng = np.random.default_rng([seed, CONTROLS.index(control)])
  if control == "shuffled":
    out = user_interest.copy()
    out[:, 1] = rng.permutation(out[:, 1])
    # A permutation can pair a user with the same node twice; the graph would merge the pair.
    return np.unique(out, axis=0)
  nodes = np.unique(user_interest[:, 1])
  want = len(np.unique(user_interest, axis=0))
  edges = np.zeros((0, 2), np.int64)
  while len(edges) < want:  # draw until `want` distinct pairs (a few rounds at these densities)
    draw = np.stack([rng.integers(0, n_users, want), rng.choice(nodes, want)], axis=1)
    edges = np.unique(np.concatenate([edges, draw]), axis=0)
  keep = rng.choice(len(edges), want, replace=False)
  return edges[np.sort(keep)]
