"""The paper's setting on a TPU pod slice: a pre-trained T5-large encoder, codebooks (4096,
1024, 256), global batch 128, 15k steps, bfloat16 compute with float32 parameters.

Launch with `launch/tpu_pod.sh --config configs/pod_t5large.py
--config.model.pretrained=gs://BUCKET/models/t5-large ...`: a Hugging Face-format t5-large
(or flan-t5-large / t5-v1_1-large) directory copied to the bucket beforehand (README,
"Pre-trained encoders"); nothing is downloaded by the job. Fields marked [P] follow the
paper, [D] are our decisions.
"""

import ml_collections

from dgi_jax import config_files


def get_config() -> ml_collections.ConfigDict:
  """Returns the locked pod config."""
  c = config_files.load("t5")  # The encoder, LRs, warm-up, batch and steps [P].
  with c.unlocked():
    # A catalogue large enough for 4096 first-level codes (the default's 5000 items would
    # leave about one item per code). Point data.dataset at a JSONL directory for real data.
    c.data.synthetic_num_items = 50000
    c.data.synthetic_num_train = 500000  # ~4 epochs over the 15k x 128 training examples.
    c.data.synthetic_num_eval = 5000  # Requests in each of valid and test.
    c.data.max_item_len = 64  # Longer titles/descriptions than the CPU default.
    c.data.max_query_len = 128  # Query plus the 10 history titles.
    c.data.max_history = 10  # History items in the request text [P].

    c.model.codebook_sizes = (4096, 1024, 256)  # [P]
    c.model.dtype = "bfloat16"  # TPU matmul precision; params stay float32 [D].

    c.train.kmeans_items = 50000  # Every item (k-means needs >> 4096 points).
    c.train.log_every = 100  # Metric lines (each one waits for the step to finish).
    c.train.checkpoint_every = 1000  # ~15 checkpoints; a preempted slice loses < 1000 steps.
    c.train.eval_every = 1000  # Validation passes pick the best checkpoint.
    c.train.distributed = True  # Every worker joins the job (jax.distributed.initialize()).
  return c
