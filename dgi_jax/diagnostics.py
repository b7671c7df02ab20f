"""Evaluation diagnostics of a trained model: what its encoder and decoder do on their own.

Beside the ranking metrics (`evaluate.py`), for each request of a split and each of its
relevant items, in one jitted pass per batch (`diagnose`):
  decoder  the teacher-forced cross-entropy of the relevant items' SIDs, per level, and the
           entropy of those codes (what a request-blind decoder could get at best on level
           1): their gap at level 1 is what the request tells the decoder about the first
           code, which bounds how well the search can start.
  encoder  the model's own encoder without the decoder: Hit/NDCG@10 of exact cosine top-K
           over the catalogue (what the dense baseline does), and per level the share of
           pairs whose request vector quantizes to the relevant item's SID prefix; they
           tell whether joint training kept requests near their items.
  routed   the encoder with the codebooks but without the decoder: the items under the
           W level-1 codewords nearest the request vector (W = the beam size; with a
           candidate budget, the fewest nearest holding that many items), ranked by
           cosine: an inverted-file search whose regions are the SIDs' first codes. Set
           beside the search at `eval.candidate_level` 1 (the decoder choosing W first
           codes), it tells whether the decoder picks regions better than geometry does.
  spread   the mean cosine between two distinct catalogue items (`mean_pairwise_cosine`):
           near 1 when the item encoder maps every item to one direction, the collapse
           that leaves one first code for the whole catalogue and InfoNCE at chance.
They take the model, its params and the index's arrays as arguments: serving (the
`Retriever`) does not compute them.
"""

import functools
from typing import Any, Dict

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dgi_jax import index as index_lib
from dgi_jax import metrics
from dgi_jax.baselines import dense
from dgi_jax.models import quantizer
from dgi_jax.models.dgi import DGIModel, EncodedRequests

DENSE_K = 10  # The encoder section reports Hit/NDCG@10 of the cosine ranking.


@flax.struct.dataclass
class Diagnostics:
  """The diagnostics of a batch of B requests, each with R target items (SIDs of m codes)."""
  dense_top_k: jax.Array  # [B, k] int32 items by cosine(request, item) alone, best first.
  request_codes: jax.Array  # [B, m] int32 the SID the quantizer gives the request vector.
  code_cross_entropy: jax.Array  # [B, R, m] float32 -log P(c_t | request, c_<t), nats.
  routed_top_k: jax.Array  # [B, k] int32 items under the nearest W first codes (-1 pads).
  routed_candidates: jax.Array  # [B] int32 how many items those W regions hold.
  # [B, W] int32 the W (<= K_1) first codes nearest the request (-1: cut by a budget).
  routed_codes: jax.Array


# The model is a static argument: a linen module is a hashable dataclass of its config,
# so every evaluation of the same model shares one compilation per shape.
@functools.partial(jax.jit, static_argnames=("model", "k", "route_width", "route_budget"))
def diagnose(model: DGIModel, params, item_vectors: jax.Array, item_first_codes: jax.Array,
             request: EncodedRequests, target_sids: jax.Array, exclude=None,
             item_prior=None, *, route_width: int, route_budget: int = 0,
             k: int = DENSE_K) -> Diagnostics:
  """The diagnostics of B encoded requests (`Retriever.encode`: the search's encoding,
  shared with it in evaluation).

  Args:
    model: The DGI model.
    params: Its parameters.
    item_vectors: float32 [N, d] unit-length item embeddings (the index's).
    item_first_codes: int32 [N] the items' first SID codes (the index's).
    request: `DGIModel.encode_requests`' output for the B requests.
    target_sids: int32 [B, R, m] SIDs whose cross-entropy is measured, R per request.
    exclude: int32 [B, E] items left out of the cosine ranking (-1 padded), or None.
    item_prior: float32 [N] added to each item's cosine in both cosine rankings (the
      search's popularity prior), or None.
    route_width: W, the level-1 codewords (holding items) the routed ranking searches.
    route_budget: with C > 0, of those W, nearest first, the fewest that hold at least C
      items (as the search's `eval.candidate_budget` takes its beams; 0: all W).
    k: Items of the cosine rankings.

  The cross-entropy is teacher-forced: the decoder reads the targets' hard codewords, as
  in the search, and its softmax runs over the whole codebook (not the prefix tables), so
  it measures the decoder, not the index. The request's own SID is that of z_q put on the
  item embeddings' scale first (unit length when they are), as the decoder's residual
  inputs do.
  """
  apply = functools.partial(model.apply, {"params": params})
  z_q = (quantizer.l2_normalize(request.z_q) if model.cfg.normalize_item_embedding
         else request.z_q)
  # The R targets of a request as one group [B, R, m]: they share the request's states,
  # projected once per request (not once per target).
  code_cross_entropy = -apply(request.z_q, request.states, request.mask, target_sids,
                              method=DGIModel.sid_log_probs)  # [B, R, m]
  # Routing: the W first codes nearest z_q among those holding items, then exact cosine
  # over the items under them.
  first_scores = apply(z_q, method=DGIModel.first_code_scores)  # [B, K_1]
  holds_items = jnp.zeros(first_scores.shape[-1], bool).at[item_first_codes].set(True)
  # W codes at most K_1 (a code holding no item may fill the W; it adds no candidate).
  routed_codes = jax.lax.top_k(jnp.where(holds_items, first_scores, -jnp.inf),
                               min(route_width, first_scores.shape[-1]))[1]  # [B, W]
  num_codes = first_scores.shape[-1]
  if route_budget:  # The codes cut become -1: out of range for the scatter, no match.
    code_sizes = jnp.zeros(num_codes, jnp.int32).at[item_first_codes].add(1)  # [K_1]
    routed_codes = jnp.where(index_lib.first_holding(code_sizes[routed_codes], route_budget),
                             routed_codes, -1)
  routed = jnp.zeros_like(first_scores, bool).at[
      jnp.arange(first_scores.shape[0])[:, None],
      jnp.where(routed_codes >= 0, routed_codes, num_codes)].set(True, mode="drop")  # [B, K_1]
  in_region = routed[:, item_first_codes]  # [B, N]
  routed_scores, routed_top_k = jax.lax.top_k(
      dense.cosine_scores(request.z_q, item_vectors, exclude, allowed=in_region,
                          item_prior=item_prior), k)
  return Diagnostics(
      dense_top_k=dense.cosine_ranking(request.z_q, item_vectors, k, exclude, item_prior),
      request_codes=apply(z_q, method=DGIModel.hard_codes),
      code_cross_entropy=code_cross_entropy,
      routed_top_k=jnp.where(routed_scores > -jnp.inf, routed_top_k, -1),
      routed_candidates=in_region.sum(axis=-1).astype(jnp.int32),
      routed_codes=routed_codes.astype(jnp.int32))


def decoder_report(cross_entropy: np.ndarray, target_sids: np.ndarray,
                   codebook_sizes) -> Dict[str, Any]:
  """How much the decoder learned about each code level of the relevant items.

  Args:
    cross_entropy: float [P, m] teacher-forced cross-entropy (nats) per pair and level.
    target_sids: int [P, m] the pairs' item SIDs.
    codebook_sizes: K_t per level.

  Returns:
    code_cross_entropy (mean per level), target_code_entropy (entropy of each level's
    code among the pairs' items, nats: level 1's is the best cross-entropy without the
    request) and level1_information (their gap at level 1, nats).
  """
  entropy = np.log(metrics.code_usage_perplexity(target_sids, codebook_sizes))
  mean_ce = cross_entropy.mean(axis=0)
  return {"code_cross_entropy": [float(x) for x in mean_ce],
          "target_code_entropy": [float(x) for x in entropy],
          "level1_information": float(entropy[0] - mean_ce[0])}


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
  """Mean cosine over the N (N - 1) ordered pairs of distinct rows of `vectors` [N, d].

  Exact in O(N d) rather than O(N^2 d): with unit rows u_i, the sum over i != j of
  u_i . u_j is |sum_i u_i|^2 - N. Zero rows count as cosine 0 with everything.
  """
  vectors = np.asarray(vectors)
  n = len(vectors)
  if n < 2:
    raise ValueError(f"the mean pairwise cosine needs at least 2 vectors, got {n}")
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  unit = np.divide(vectors, norms, out=np.zeros(vectors.shape, np.float32), where=norms > 0)
  # Sums in float64: the difference below is small against either term when items spread.
  self_pairs = np.sum(np.square(unit, dtype=np.float64))  # N, less any zero rows.
  total = unit.sum(axis=0, dtype=np.float64)
  return float((np.dot(total, total) - self_pairs) / (n * (n - 1)))


def encoder_report(dense_ranked: np.ndarray, relevant: np.ndarray,
                   prefix_agreement: np.ndarray, routed_ranked: np.ndarray,
                   routed_candidates: np.ndarray, routed_found: np.ndarray,
                   item_vectors: np.ndarray) -> Dict[str, Any]:
  """The trained encoder on its own (see the module doc, `encoder` and `routed`).

  Args:
    dense_ranked: int [Q, DENSE_K] items ranked by cosine(request, item) alone.
    relevant: int [Q, R] relevant item indices per request, padded with -1.
    prefix_agreement: bool/int [P, m], per (request, relevant item) pair and level t,
      whether the request's own SID agrees with the item's on levels 1..t.
    routed_ranked: int [Q, DENSE_K] the routed ranking (-1 padded).
    routed_candidates: int [Q] the items under each request's routed first codes.
    routed_found: bool [P] whether the pair's item is under its request's routed codes.
    item_vectors: float [N, d] the catalogue's item embeddings.

  Returns:
    dense (hit@10, ndcg@10 of the exact cosine ranking), sid_prefix_agreement (mean per
    level), routed (hit@10, ndcg@10, candidates: the mean items under the routed
    codes, recall: the share of pairs whose item is under them) and item_mean_cosine.
  """
  def top(ranked):
    means = metrics.retrieval_metrics(ranked, relevant, (DENSE_K,), DENSE_K)
    return {name: float(means[f"{name}@{DENSE_K}"]) for name in ("hit", "ndcg")}
  return {"dense": top(dense_ranked),
          "sid_prefix_agreement": [float(x) for x in prefix_agreement.mean(axis=0)],
          "routed": dict(top(routed_ranked), candidates=float(routed_candidates.mean()),
                         recall=float(routed_found.mean())),
          "item_mean_cosine": mean_pairwise_cosine(item_vectors)}
