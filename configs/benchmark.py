"""Benchmark config (`dgi benchmark --dataset DIR`): the shared budget of every method.

Sized so that each trained method takes minutes on 2 CPU cores. `benchmark_beauty.py`,
`benchmark_scifact.py` adapt it per dataset; `benchmark_beauty_accelerator.py` is the larger
budget for one GPU/TPU.

Every method runs on one encoder, chosen by the config argument:
  minilm   (default) the pre-trained all-MiniLM-L6-v2 of `configs/minilm.py`, bundled
           with the `[pretrained]` extra: DGI as the paper sets it up, refining a
           pre-trained encoder, with k-means over its item embeddings;
  scratch  our transformer and a WordPiece trained on the dataset, from random weights:
           `dgi benchmark --config configs/benchmark.py:scratch ...`;
  t5       the paper's encoder, a T5 checkpoint at --config.model.pretrained, at the
           paper's batch and steps (`configs/t5.py`): the default of the
           `*_accelerator.py` configs, which give it an accelerator's budget.
"""

import ml_collections

from dgi_jax import config_files

# The config argument -> the config file it starts from.
ENCODERS = {"minilm": "minilm", "scratch": "default", "t5": "t5"}


def get_config(encoder: str = "minilm") -> ml_collections.ConfigDict:
  """Returns the locked benchmark config on `encoder` ('minilm', 'scratch' or 't5')."""
  if encoder not in ENCODERS:
    raise ValueError(f"configs/benchmark.py:{encoder}: the encoder is one of "
                     f"{tuple(ENCODERS)}")
  c = config_files.load(ENCODERS[encoder])
  with c.unlocked():
    # Each trained method is reported at its best checkpoint on the validation split
    # (`train.best_metric`), scored every eval_every steps by its own ranking. A MiniLM
    # pass (index 12k items, search 2k requests) takes minutes on 2 cores.
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    # The beams choose the candidates, the encoder's cosine orders them: on Beauty's test
    # split Hit@10 .0249 against .0186 in the paper's beam-score order (scratch encoder,
    # history as embeddings; docs/DESIGN.md, "Ranking the beams' items").
    # --config.eval.ranking=sid adds the decoder's log-probability of each candidate's
    # whole SID (w x cosine + log P, w chosen on validation from the grid below, over the
    # 100 candidates of highest cosine): on SciFact no better on test over seven
    # generative runs, and lower in the tail (docs/DESIGN.md, "The decoder's whole-SID
    # log-probability as a ranking signal"). eval.ranking=beam with candidate_level 0 is
    # the paper's order.
    c.eval.ranking = "cosine"
    c.eval.cosine_weight = 20.0  # 'blend' / 'sid' in validation during training.
    c.eval.sid_rerank_depth = 100
    # The search stops at the best first codes and every item under them is a candidate
    # (ranked by cosine: on Beauty (MiniLM) validation Hit@10 .041 against .020 for the
    # items of the full SIDs; docs/DESIGN.md, "Candidates under the beams' prefixes").
    c.eval.candidate_level = 1
    c.benchmark = ml_collections.ConfigDict()
    # With eval.ranking 'blend' or 'sid', each generative method's cosine weight is the one
    # of these that scores best on validation (train.best_metric), chosen after training;
    # empty: eval.cosine_weight.
    c.benchmark.cosine_weight_grid = (10.0, 20.0, 40.0, 80.0)
    # Each method that ranks by cosine (the generative methods' candidates, dense,
    # zero-shot) takes the eval.popularity_weight of these that scores best on
    # validation, after training (0 keeps the cosine alone); empty: eval.popularity_weight.
    # On Beauty the prior lifts the trained encoder's exact ranking from .0609 to .066
    # Hit@10 (docs/DESIGN.md, "The popularity the in-batch softmax divides out").
    c.benchmark.popularity_weight_grid = (0.0, 0.01, 0.02, 0.03, 0.05)
    # Every method (BM25 included) leaves each request's history items out of its ranking
    # or keeps them, whichever scores best on validation, chosen before the popularity
    # weight; empty: eval.exclude_history. Users who never take an item twice (Beauty: no test
    # target is in its history) gain; logs of repeat purchases keep them. Requests
    # without a history tie, and the first listed (kept) wins.
    c.benchmark.exclude_history_grid = (False, True)
    # Two-Stage: share of train.num_steps spent on stage 1 (item tower + quantizer); the
    # rest (after the encoder warm-up) trains the retriever on the frozen SIDs, so its
    # total equals the others'.
    c.benchmark.two_stage_stage1_fraction = 0.15
    # Generative methods (DGI and its ablations): share of train.num_steps that trains the
    # encoder alone with InfoNCE before k-means initialises the codebooks over its item
    # embeddings. From scratch it stands in for the paper's pre-trained T5 (0 = k-means on
    # the random encoder at step 0); a pre-trained encoder needs none: k-means runs over
    # its item embeddings at step 0, as in the paper. The total stays train.num_steps.
    c.benchmark.encoder_warmup_fraction = 0.3 if encoder == "scratch" else 0.0
    # Size the index to the catalogue (benchmark/runner.py, `index_for_catalogue`): K codes
    # per level, K the power of two nearest 2 sqrt(N) (Beauty 256, SciFact 128, 50k items
    # 512), and k-means over the whole catalogue (up to 100k items). This replaces
    # model.codebook_sizes and train.kmeans_items; False keeps them as set.
    c.benchmark.size_index_to_catalogue = True
    # Each trained method runs this many times; run k adds k to train.seed
    # (initialisation, k-means, Gumbel noise) and data.shuffle_seed (batch order), and
    # lives in <workdir>/seed<k> (k = 0: <workdir> itself, whose runs fill the tables).
    # results.md adds the mean and standard error over the finished seeds.
    c.benchmark.num_seeds = 1
    # The trained methods that run num_seeds times, comma-separated as --methods names
    # them (e.g. 'dgi,dgi_ste,two_stage,dense': the headline methods, with the ablations
    # run once and read against their spread); empty: every trained method.
    c.benchmark.seeded_methods = ""
    c.benchmark.bm25_k1 = 0.9  # BM25 term-frequency saturation (Anserini default).
    c.benchmark.bm25_b = 0.4  # BM25 length normalisation (Anserini default).
    # Options of the dataset's converter (dgi_jax/data/converters), e.g. max_valid_users.
    c.benchmark.converter_options = ml_collections.ConfigDict()
    c.benchmark.reference = ""  # Published numbers quoted in results.md.
  c.lock()
  return c
