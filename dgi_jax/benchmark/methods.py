"""The methods `dgi benchmark` compares: the paper's Table-2 baselines and Table-3 ablations.

Every trained method is the DGI code base with config overrides, so all share one encoder,
data pipeline, step budget and evaluation; only what the method changes differs. Methods
with codebooks (two_stage, dgi*) first spend `benchmark.encoder_warmup_fraction` of the
budget training the encoder alone (ENCODER_WARMUP), then k-means the codebooks over it.

  bm25                   bm25s over item texts; request = query + recent history titles.
  zero_shot              the pre-trained encoder as it comes (model.pretrained), untrained:
                         exact cosine top-K over the catalogue. Needs model.pretrained.
  dense                  the same encoder trained with in-batch InfoNCE only; exact cosine
                         top-K over the catalogue.
  two_stage              TIGER-like: stage 1 trains an item tower and an RQ quantizer
                         (InfoNCE for the towers, reconstruction + commitment + diversity
                         for the codebooks; dot geometry); on a pre-trained encoder the
                         item tower stays frozen, as TIGER quantizes frozen pre-trained
                         item embeddings; stage 2 freezes the item tower and
                         codebooks (hence the SIDs) and trains the request encoder and a
                         decoder with separate dot-product heads on next-code prediction.
  dgi                    full DGI (Gumbel soft vectors, heads = codebooks, scaled cosine).
  dgi_ste                ablation: straight-through estimator instead of soft vectors.
  dgi_untied             ablation: separate decoder heads (no symmetric weight sharing).
  dgi_ste_untied         ablation: both of the above.
  dgi_dot                ablation: dot-product logits and MSE reconstruction.
  dgi_none               ablation: all three removed. This is also the joint-STE
                         (UniSearch-like) baseline: one-stage training through STE with a
                         separate output layer and dot logits.
"""

import dataclasses
from typing import Dict, List, Tuple

BM25, ZERO_SHOT, DENSE, GENERATIVE, TWO_STAGE = ("bm25", "zero_shot", "dense", "generative",
                                                 "two_stage")
# Kinds that train, hence depend on the seeds (BM25 and zero-shot are deterministic).
TRAINED = (DENSE, GENERATIVE, TWO_STAGE)

# Loss weights that switch every term off; methods turn on what they train with.
_NO_LOSSES = {"loss.ntp_weight": 0.0, "loss.global_weight": 0.0, "loss.local_weight": 0.0,
              "loss.infonce_weight": 0.0, "loss.div_weight": 0.0}


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the results table.

  Attributes:
    name: Identifier used on the command line and as the method's work directory.
    label: Name in the results table.
    kind: How it trains and ranks: BM25, ZERO_SHOT, DENSE, GENERATIVE or TWO_STAGE.
    overrides: Config overrides, 'section.field' -> value, applied to the benchmark config.
    stage2_overrides: TWO_STAGE only: overrides of the second stage on top of `overrides`.
    pretrained_overrides: Overrides on top of `overrides` when the encoder is pre-trained
      (`model.pretrained` set).
  """
  name: str
  label: str
  kind: str
  overrides: Dict[str, object] = dataclasses.field(default_factory=dict)
  stage2_overrides: Dict[str, object] = dataclasses.field(default_factory=dict)
  pretrained_overrides: Dict[str, object] = dataclasses.field(default_factory=dict)

  def config_overrides(self, pretrained: bool) -> Dict[str, object]:
    """The overrides of the method's (first) training run."""
    return {**self.overrides, **(self.pretrained_overrides if pretrained else {})}


# The encoder warm-up of generative methods (benchmark.encoder_warmup_fraction): the
# dense method's objective, InfoNCE alone, before k-means initialises the codebooks.
ENCODER_WARMUP = {**_NO_LOSSES, "loss.infonce_weight": 1.0, "train.kmeans_init": False}

# Run order ('all'): the cheap baseline, full DGI and the main baselines first, then the
# single ablations, so an interrupted benchmark has the headline comparison; tables use
# TABLE_2 / TABLE_3 order.
METHODS: Tuple[Method, ...] = (
    Method("bm25", "BM25 (bm25s)", BM25),
    Method("zero_shot", "Pre-trained encoder, zero-shot (cosine)", ZERO_SHOT),
    Method("dgi", "DGI (full)", GENERATIVE),
    Method("two_stage", "Two-Stage (TIGER-like, dot heads)", TWO_STAGE,
           # Stage 1: every loss but NTP, at the benchmark's weights (InfoNCE included).
           overrides={"loss.ntp_weight": 0.0,
                      "model.separate_item_encoder": True, "model.geometry": "dot",
                      "model.tie_heads": False, "model.grad_path": "ste"},
           stage2_overrides={**_NO_LOSSES, "loss.ntp_weight": 1.0,
                             "optim.frozen": ("item_encoder", "codebook_",
                                              "gamma_quantizer")},
           # As TIGER builds it on a pre-trained encoder: stage 1 fits the quantizer to
           # the frozen pre-trained item embeddings (reconstruction, commitment,
           # diversity), the item tower untouched.
           pretrained_overrides={"loss.infonce_weight": 0.0,
                                 "optim.frozen": ("item_encoder",)}),
    Method("dense", "Dense dual encoder (InfoNCE)", DENSE, ENCODER_WARMUP),
    Method("dgi_none", "Joint STE (UniSearch-like) = DGI none", GENERATIVE,
           {"model.grad_path": "ste", "model.tie_heads": False, "model.geometry": "dot"}),
    Method("dgi_ste", "DGI w/o soft gradient (STE)", GENERATIVE,
           {"model.grad_path": "ste"}),
    Method("dgi_untied", "DGI w/o weight sharing", GENERATIVE,
           {"model.tie_heads": False}),
    Method("dgi_dot", "DGI w/o scaled cosine (dot)", GENERATIVE,
           {"model.geometry": "dot"}),
    Method("dgi_ste_untied", "DGI w/o soft gradient, w/o sharing", GENERATIVE,
           {"model.grad_path": "ste", "model.tie_heads": False}),
)

BY_NAME = {m.name: m for m in METHODS}
# The two tables of results.md: the paper's Table 2 (methods) and Table 3 (ablations).
TABLE_2 = ("bm25", "zero_shot", "dense", "two_stage", "dgi_none", "dgi")
TABLE_3 = ("dgi", "dgi_ste", "dgi_untied", "dgi_ste_untied", "dgi_dot", "dgi_none")


def select(spec: str) -> Tuple[Method, ...]:
  """Methods of a comma-separated list of names, in the list's order (repeats dropped).

  'all' gives every method in table order. The order is the order they run in, so a user
  can put the methods whose numbers they need first.
  """
  if spec.strip() == "all":
    return METHODS
  names = [n.strip() for n in spec.split(",") if n.strip()]
  unknown = [n for n in names if n not in BY_NAME]
  if unknown or not names:
    raise ValueError(f"unknown method(s) {unknown or spec!r}; choose from "
                     f"{', '.join(BY_NAME)} or 'all'")
  return tuple(BY_NAME[n] for n in dict.fromkeys(names))


def validation_grids(config) -> List[Tuple[str, tuple]]:
  """The ranking settings every method chooses on validation after training, in the order
  they are chosen, each with its grid: whether the history is left out (whether users come
  back to an item is a property of the data, which the validation targets show), then the
  popularity prior's weight under that choice. A setting whose grid is empty keeps the
  config's value, and requests that read no history (data.max_history 0) have none to
  leave out."""
  b = config.benchmark
  exclusion = (tuple(b.get("exclude_history_grid", ()))
               if int(config.data.max_history) else ())
  grids = [("exclude_history", exclusion),
           ("popularity_weight", tuple(float(x) for x in b.get("popularity_weight_grid", ())))]
  return [(setting, grid) for setting, grid in grids if grid]
