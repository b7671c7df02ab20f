"""The built-in synthetic e-commerce retrieval dataset (pure numpy, a function of its seed).

Items are product titles composed from a category's word lists ("Lumen Pro Vitamin C
Face Serum, 30 ml, fragrance-free"). Requests imitate a shop's search log:
- targets follow a Zipf popularity over a random order of the items (long tail);
- a share of items (`HOLDOUT_FRACTION`) is never a training target, and a share of
  evaluation requests (`EVAL_HOLDOUT_SHARE`) targets them, to measure cold items;
- the query is typed from the target's visible attributes with noise: synonyms,
  dropped words, typos, shuffled word order, casing;
- the history (1..`MAX_HISTORY` items, oldest first) mixes items of the target's
  category or brand with popular items, the most recent ones being the most related.
Separate random streams make the catalogue independent of the number of requests.
"""

import dataclasses

import numpy as np

from dgi_jax.data import records
from dgi_jax.data import synthetic_vocab as vocab

ZIPF_EXPONENT = 0.9  # Popularity of the item of rank r is proportional to r**-s.
HOLDOUT_FRACTION = 0.1  # Items that are never a training target.
EVAL_HOLDOUT_SHARE = 0.2  # Evaluation requests whose target is a held-out item.
MAX_HISTORY = 10  # Longest user history.
BRANDS_PER_CATEGORY = 9

# Random streams, one per purpose, so that e.g. num_train does not change the items.
_ITEMS, _POPULARITY, _TRAIN, _VALID, _TEST = range(5)

# Title layouts; a product only shows (and a query only uses) the fields its layout has.
_TEMPLATES = (
    ("{brand}{line} {primary} {type}, {size}, {feature}", ("primary", "size", "feature")),
    ("{brand}{line} {primary} {type}, {size}", ("primary", "size")),
    ("{brand}{line} {secondary} {primary} {type}, {feature}",
     ("secondary", "primary", "feature")),
    ("{brand}{line} {type}, {primary}, {secondary}, {size}",
     ("primary", "secondary", "size")),
    ("{brand}{line} {primary} {type} - {secondary}, {size}, {feature}",
     ("primary", "secondary", "size", "feature")),
)
_OPTIONAL_FIELDS = ("primary", "secondary", "size", "feature")


@dataclasses.dataclass(frozen=True)
class _Product:
  category: str
  brand: str
  line: str  # '' when the title names no product line.
  type_name: str
  primary: str
  secondary: str  # Optional fields are '' when the title does not show them.
  size: str
  feature: str
  template: int

  def title(self) -> str:
    line = f" {self.line}" if self.line else ""
    return _TEMPLATES[self.template][0].format(
        brand=self.brand, line=line, type=self.type_name, primary=self.primary,
        secondary=self.secondary, size=self.size, feature=self.feature)


def _draw_product(category: str, brands: list[str], brand_p: np.ndarray,
                  rng: np.random.Generator) -> _Product:
  words = vocab.CATEGORIES[category]
  template = int(rng.integers(len(_TEMPLATES)))
  shown = _TEMPLATES[template][1]
  fields = {}
  for field, options in (("primary", words["primary"]), ("secondary", words["secondary"]),
                         ("size", words["sizes"]), ("feature", words["features"])):
    value = options[rng.integers(len(options))]
    fields[field] = value if field in shown else ""
  return _Product(
      category=category, brand=brands[rng.choice(len(brands), p=brand_p)],
      line=vocab.LINES[rng.integers(len(vocab.LINES))] if rng.random() < 0.3 else "",
      type_name=list(words["types"])[rng.integers(len(words["types"]))],
      template=template, **fields)


def _make_products(num_items: int, rng: np.random.Generator) -> list[_Product]:
  """Draws `num_items` products with distinct titles (identical titles are unlearnable)."""
  categories = list(vocab.CATEGORIES)
  category_p = rng.dirichlet(np.full(len(categories), 5.0))  # Uneven category sizes.
  brands = {c: [str(b) for b in rng.choice(vocab.BRANDS, BRANDS_PER_CATEGORY,
                                           replace=False)] for c in categories}
  brand_p = 1.0 / np.arange(1, BRANDS_PER_CATEGORY + 1) ** 0.7  # A few big brands.
  brand_p /= brand_p.sum()
  products, titles = [], set()
  for category_index in rng.choice(len(categories), size=num_items, p=category_p):
    category = categories[category_index]
    for _ in range(100):
      product = _draw_product(category, brands[category], brand_p, rng)
      if product.title() not in titles:
        break
    else:
      raise ValueError(f"cannot draw {num_items} distinct titles; the word lists are "
                       "too small for this catalogue size")
    titles.add(product.title())
    products.append(product)
  return products


def _typo(word: str, rng: np.random.Generator) -> str:
  i = int(rng.integers(len(word) - 1))
  kind = rng.integers(4)
  if kind == 0:  # Swapped neighbours.
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]
  if kind == 1:  # Dropped letter.
    return word[:i] + word[i + 1:]
  if kind == 2:  # Doubled letter.
    return word[:i + 1] + word[i] + word[i + 1:]
  return word[:i] + chr(ord("a") + int(rng.integers(26))) + word[i + 1:]


def _phrase(text: str, synonyms: tuple[str, ...], rng: np.random.Generator,
            p_synonym: float) -> str:
  if synonyms and rng.random() < p_synonym:
    return synonyms[rng.integers(len(synonyms))]
  return text


def make_query(product: _Product, rng: np.random.Generator) -> str:
  """Types a shopper's query for `product` from its visible attributes, with noise."""
  type_synonyms = vocab.CATEGORIES[product.category]["types"][product.type_name]
  parts = []
  for text, p_use in ((product.brand, 0.3), (product.line, 0.1), (product.primary, 0.7),
                      (product.type_name, 1.0), (product.secondary, 0.2),
                      (product.feature, 0.25), (product.size, 0.1)):
    if not text or rng.random() >= p_use:
      continue
    if text == product.type_name:
      parts.append(_phrase(text, type_synonyms, rng, 0.4))
    else:
      parts.append(_phrase(text, vocab.ATTRIBUTE_SYNONYMS.get(text.lower(), ()), rng, 0.4))
  if rng.random() < 0.3:
    parts = [parts[i] for i in rng.permutation(len(parts))]
  words = " ".join(parts).replace(",", "").split()
  if len(words) > 2 and rng.random() < 0.15:
    del words[rng.integers(len(words))]
  words = [_typo(w, rng) if len(w) >= 4 and rng.random() < 0.06 else w for w in words]
  query = " ".join(words)
  return query.lower() if rng.random() < 0.85 else query


class _HistorySampler:
  """Draws popularity-weighted items from the target's category, its brand, or anywhere."""

  def __init__(self, products: list[_Product], weights: np.ndarray):
    self._products = products
    self._groups = {}
    for key_fn in (lambda p: ("category", p.category), lambda p: ("brand", p.brand)):
      members = {}
      for index, product in enumerate(products):
        members.setdefault(key_fn(product), []).append(index)
      for key, indices in members.items():
        indices = np.asarray(indices)
        self._groups[key] = (indices, np.cumsum(weights[indices]))
    self._groups["all"] = (np.arange(len(products)), np.cumsum(weights))

  def _draw(self, key, rng: np.random.Generator) -> int:
    indices, cdf = self._groups[key]
    return int(indices[min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"),
                           len(indices) - 1)])

  def history(self, target: int, rng: np.random.Generator) -> list[int]:
    """Returns 1..MAX_HISTORY distinct item indices (oldest first), none the target."""
    product = self._products[target]
    length = int(rng.integers(1, MAX_HISTORY + 1))
    history = []
    for position in range(length):
      related = 0.35 + 0.5 * (position + 1) / length  # The newest are the most related.
      u = rng.random()
      if u < 0.6 * related:
        key = ("category", product.category)
      elif u < related:
        key = ("brand", product.brand)
      else:
        key = "all"
      item = self._draw(key, rng)
      if item != target and item not in history:
        history.append(item)
    while not history:
      item = self._draw("all", rng)
      if item != target:
        history.append(item)
    return history


def _requests(targets: np.ndarray, products: list[_Product], ids: list[str],
              sampler: _HistorySampler, rng: np.random.Generator) -> list[records.Request]:
  out = []
  for target in targets:
    target = int(target)
    out.append(records.Request(
        query=make_query(products[target], rng),
        history=tuple(ids[i] for i in sampler.history(target, rng)),
        item_ids=(ids[target],)))
  return out


def make_synthetic_dataset(num_items: int = 5000, num_train: int = 40000,
                           num_eval: int = 2000, seed: int = 0) -> records.RawDataset:
  """Generates the built-in dataset.

  Args:
    num_items: Catalogue size (at least 20, so that held-out items exist).
    num_train: Training requests.
    num_eval: Requests in each of 'validation' and 'test'.
    seed: The dataset is a deterministic function of the arguments.

  Returns:
    The catalogue and the 'train', 'validation' and 'test' requests.
  """
  if num_items < 20 or num_train < 1 or num_eval < 1:
    raise ValueError(f"need num_items >= 20 and positive request counts, got "
                     f"{num_items=}, {num_train=}, {num_eval=}")
  stream = lambda purpose: np.random.default_rng([seed, purpose])
  products = _make_products(num_items, stream(_ITEMS))
  ids = [f"item-{i:05d}" for i in range(num_items)]

  rng = stream(_POPULARITY)
  rank = np.empty(num_items, np.int64)
  rank[rng.permutation(num_items)] = np.arange(1, num_items + 1)
  weights = rank.astype(np.float64) ** -ZIPF_EXPONENT
  held_out = rng.choice(num_items, size=max(1, round(HOLDOUT_FRACTION * num_items)),
                        replace=False)
  train_p = weights.copy()
  train_p[held_out] = 0.0
  train_p /= train_p.sum()
  sampler = _HistorySampler(products, weights)

  def eval_targets(rng):
    targets = rng.choice(num_items, size=num_eval, p=train_p)
    cold = rng.random(num_eval) < EVAL_HOLDOUT_SHARE
    targets[cold] = rng.choice(held_out, size=int(cold.sum()))
    return targets

  splits = {}
  rng = stream(_TRAIN)
  splits["train"] = _requests(rng.choice(num_items, size=num_train, p=train_p), products,
                              ids, sampler, rng)
  for split, purpose in (("validation", _VALID), ("test", _TEST)):
    rng = stream(purpose)
    splits[split] = _requests(eval_targets(rng), products, ids, sampler, rng)
  items = [records.Item(item_id=i, text=p.title()) for i, p in zip(ids, products)]
  return records.RawDataset(items=items, splits=splits)
