"""Non-generative baselines of the benchmark: BM25 and dense exact-cosine ranking."""
