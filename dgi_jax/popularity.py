"""The popularity prior of a cosine ranking: w * ln(1 + f(i)) added to item i's cosine.

In-batch InfoNCE (DGI's L_CL and the dense baseline's only loss) takes its negatives
from the batch's targets, so an item is a negative about as often as it is a target.
The softmax's optimum then scores a (request, item) pair by pointwise mutual
information, cos(q, i) / tau = log p(i | q) - log p(i) + c(q): the item's popularity is
divided out (the sampling bias that a log Q correction removes in training, Yi et al.,
RecSys 2019). Ranking the whole catalogue for what comes next wants p(i | q), i.e. the
cosine plus tau * log p(i). The scaled cosine keeps popularity out of the geometry (an
item's norm cannot carry it, which is the point of DGI's logits), so here it is an
explicit term of the ranking alone, with weight w (`eval.popularity_weight`, in cosine
units; the optimum above suggests w = tau_CL) chosen on validation by the benchmark. The
decoder needs none: its softmax runs over whole codebooks, not over sampled negatives,
so its code probabilities already hold the targets' frequencies.

f(i) is the number of training requests whose target is item i (the long-tail
protocol's popularity, `Dataset.train_popularity`); an item added after training has
f = 0. With w = 0 every ranking is the cosine as before.
"""

import numpy as np


def log_popularity(train_popularity) -> np.ndarray:
  """float32 [N] ln(1 + f(i)) of the training popularity f, int [N]."""
  counts = np.asarray(train_popularity, np.float64)
  if counts.ndim != 1 or (counts < 0).any():
    raise ValueError("train_popularity: expected a 1-D array of counts >= 0")
  return np.log1p(counts).astype(np.float32)


def item_prior(train_popularity, weight: float) -> np.ndarray:
  """float32 [N] w * ln(1 + f(i)): the term added to each item's cosine."""
  return (float(weight) * log_popularity(train_popularity)).astype(np.float32)
