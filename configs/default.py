"""Default DGI config: trains on the built-in synthetic catalogue in ~10 minutes on 2 CPU cores.

Every field carries a comment. Variants import `get_config()` and override a few fields.
Fields marked [P] follow the paper, [D] are our decisions where the paper is silent.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the locked default config."""
  c = ml_collections.ConfigDict()

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  # 'synthetic' (built-in catalogue, no files), or a directory holding the generic JSONL
  # format (items.jsonl, train.jsonl, valid.jsonl, test.jsonl).
  c.data.dataset = "synthetic"
  c.data.synthetic_num_items = 5000  # Catalogue size of the built-in dataset.
  c.data.synthetic_num_train = 40000  # Training requests of the built-in dataset.
  c.data.synthetic_num_eval = 2000  # Requests in each of valid and test.
  c.data.seed = 0  # Seed of the built-in catalogue (the dataset is a function of it).
  c.data.tfds_dir = ""  # Where TFDS writes prepared datasets; '' = <workdir>/tfds.
  c.data.vocab_size = 8000  # Tokenizer vocabulary (WordPiece, trained on the dataset).
  c.data.max_item_len = 32  # Tokens of an item text.
  c.data.max_query_len = 64  # Tokens of `query [SEP] history titles`.
  c.data.max_history = 5  # Most recent history items a request reads (paper: 10).
  # How a request reads its history: 'text' (the titles, newest first, after the query in
  # the request tokens, cut at max_query_len), or one encoder input position per item
  # after the query tokens: 'codes' (the sum of the item's SID codewords, looked up in the
  # codebooks, which then also serve as input embeddings; gradients reach them) or
  # 'embedding' (the item's own l2-normalised embedding from the shared encoder, held in
  # a table refreshed every train.history_refresh_every steps). See docs/DESIGN.md.
  c.data.history_repr = "text"
  c.data.shuffle_seed = 0  # Seed of the training data order.
  c.data.worker_count = 0  # grain worker processes (0 = in the main process).

  # ---------------------------------------------------------------- model
  c.model = ml_collections.ConfigDict()
  # The shared text encoder [P: a pre-trained T5-large]: 'scratch' (our pre-LN transformer,
  # random init, WordPiece trained on the dataset), 'bert' (BERT family: all-MiniLM-L6-v2,
  # bge-small, BERT-base) or 't5' (T5 v1.0 / v1.1 / flan-T5 encoder). 'bert' and 't5' load
  # `model.pretrained`, whose config.json must be of that kind.
  c.model.encoder = "scratch"
  # Hugging Face-format directory (local or gs://) of the pre-trained encoder: config.json,
  # model.safetensors or pytorch_model.bin, tokenizer.json / vocab.txt / spiece.model. Its
  # width, depth, heads and vocabulary replace d_model, num_heads-of-the-encoder,
  # encoder_layers and data.vocab_size; the tokenizer is the checkpoint's. Nothing is
  # downloaded: point it at a directory you copied there.
  c.model.pretrained = ""
  # The encoder architecture read from `pretrained`'s config.json (JSON), filled in by
  # training and saved with every checkpoint so that evaluation and serving never need
  # the original directory. Leave empty.
  c.model.encoder_spec = ""
  c.model.d_model = 128  # Width of encoder, decoder, codebooks (one width for all) [P].
  c.model.num_heads = 4  # Attention heads.
  c.model.mlp_dim = 256  # Hidden width of the transformer MLPs.
  c.model.encoder_layers = 2  # Shared text encoder depth.
  c.model.decoder_layers = 2  # SID decoder depth.
  c.model.dropout_rate = 0.0  # Dropout; 0 keeps jit == pmap == 1 device exact.
  c.model.codebook_sizes = (64, 64, 64)  # K_j per level (paper: 4096, 1024, 256) [P].
  c.model.gamma_init = 30.0  # Initial scale of the scaled-cosine logits [P].
  c.model.share_gamma = False  # One gamma for quantizer and decoder heads [D].
  # Gradient path from the NTP loss into the quantizer: 'gumbel_soft' (DGI), 'ste'
  # (straight-through, UniSearch-like), 'gumbel_st' (Gumbel straight-through) or
  # 'frozen' (decoder inputs carry no gradient to the quantizer / item encoder).
  c.model.grad_path = "gumbel_soft"
  c.model.tie_heads = True  # Decoder heads ARE the codebooks (symmetric weight sharing) [P].
  c.model.geometry = "cosine"  # 'cosine' (scaled cosine) or 'dot' (dot logits, MSE recon).
  c.model.dtype = "float32"  # Compute dtype ('float32' or 'bfloat16'); params stay float32.
  # Items get their own encoder tower instead of sharing the request encoder [D]; the
  # Two-Stage baseline uses it to keep its item embeddings (hence SIDs) frozen in stage 2.
  c.model.separate_item_encoder = False
  # Quantize the unit-length item embedding z_base / ||z_base|| [D]: cosine scores ignore
  # the scale anyway, and it keeps L_Local (squared distances) on the scale of the other
  # losses instead of ~100x them, which collapses the embeddings on real data.
  c.model.normalize_item_embedding = True
  # Decoder input at step t [D]: 'sum' = z_q + sum_{j<t} z~_j (read off the paper's
  # figure); 'residual' = z_q - sum_{j<t} z~_j, the request's residual after the prefix,
  # with z_q on the item embeddings' scale (unit length when they are). Level t's head
  # (the codebook) then scores the same kind of vector the quantizer scores on the item
  # side.
  c.model.decoder_inputs = "residual"
  # The decoder's level embeddings and residual-branch output projections start at zero
  # [D], so the untrained decoder passes its inputs through (up to the final LayerNorm):
  # with residual inputs it starts as the geometric search of the request's residuals
  # and training learns corrections, instead of starting from random logits.
  c.model.decoder_identity_init = True
  # data.history_repr 'codes': whether the history's gradient reaches the codebooks it
  # reads as input embeddings [D] (off: they enter as constants; see docs/DESIGN.md).
  c.model.history_code_gradient = True
  # The Dense layers' backward pass: 'flat' (activations flattened to 2-D and both gradient
  # matmuls written out, which XLA:CPU runs 2x faster than autodiff's kernel gradient),
  # 'autodiff' (lax.dot_general's own) or 'auto' (flat on CPU, autodiff on GPU / TPU).
  # The same products either way (models/matmul.py, docs/DESIGN.md "Kernel gradients").
  c.model.dense_gradient = "auto"
  # Attention's backward pass: 'written' (heads ahead of positions, dV, dP, the softmax's
  # gradient, dQ and dK written out from the saved weights; 1.7x faster per attention
  # layer on XLA:CPU), 'autodiff' (Flax's attention and its gradient) or 'auto' (written on
  # CPU, autodiff on GPU / TPU). The same products (models/attention.py, docs/DESIGN.md
  # "Attention's backward").
  c.model.attention_gradient = "auto"

  # ---------------------------------------------------------------- losses
  c.loss = ml_collections.ConfigDict()
  c.loss.ntp_weight = 1.0  # Next-token (code) prediction [P].
  c.loss.global_weight = 1.0  # 1 - cos(z_base, sum_j z~_j) [P].
  c.loss.local_weight = 1.0  # Residual commitment loss [P].
  # In-batch contrastive query/item loss, at 10x the paper's weight of 1 [D]. From
  # scratch, the NTP and diversity gradients reaching the shared encoder are 10-30x
  # InfoNCE's, so at weight 1 joint training pulls the encoder off its retrieval geometry
  # and the SIDs collapse as the decoder learns (the paper's 1 assumes a pre-trained T5).
  # Measured: Beauty benchmark DGI test hit@10 .0100 -> .0231 (391 -> 6,979 distinct
  # SIDs); this config's run hit@10 .634 -> .717 (492 -> 2,414 distinct SIDs of 5,000).
  c.loss.infonce_weight = 10.0
  c.loss.div_weight = 1.0  # Negative entropy of batch code usage [P].
  c.loss.beta = 0.25  # Commitment weight inside L_Local [D, as RQ-VAE].
  c.loss.infonce_temperature = 0.07  # tau_CL [D].
  c.loss.div_eps = 1e-10  # eps in log(pbar + eps).
  # Code usage pbar of L_Div [D]: 'clean' = batch mean of softmax(s / tau), the smooth
  # version of the hard codes' histogram; 'gumbel' = batch mean of the Gumbel-softmax p,
  # whose noise alone looks diverse while the hard codes (the SIDs) collapse.
  c.loss.div_probs = "clean"
  # Temperature T of the 'clean' usage softmax(s / T) [D]; 0 = the Gumbel temperature tau.
  # L_Div's gradient scales as gamma / T: at tau = 0.1 it is ~100x the other terms' and
  # steers the encoder, but a fixed T = 1 makes the usage too soft to see the hard codes
  # collapse (Beauty: 101 distinct SIDs of 12,101); see docs/DESIGN.md.
  c.loss.div_temperature = 0.0

  # ---------------------------------------------------------------- optimisation
  c.optim = ml_collections.ConfigDict()
  c.optim.backbone_lr = 1e-3  # Encoder/decoder peak LR (paper 5e-5 for pre-trained T5).
  # Codebooks and gammas. The paper uses 10x the backbone's 5e-5 [P]; with unit-length
  # item embeddings (codewords of norm <= 1) a 1e-2 Adam step moves a 128-d codeword by
  # ~0.1 per step and the codes churn and collapse, so from scratch we use 1x [D].
  c.optim.quantizer_lr = 1e-3
  # Every parameter outside the encoder towers and the quantizer (the SID decoder, untied
  # heads, the history projection) at its own peak LR; 0 = backbone_lr. For a pre-trained
  # encoder, whose backbone_lr suits refining it but not a decoder that starts from
  # random weights (the paper's T5 decoder is pre-trained too) [D].
  c.optim.decoder_lr = 0.0
  c.optim.warmup_steps = 100  # Linear warm-up, then linear decay to 0 [P: 1000].
  c.optim.weight_decay = 0.01  # AdamW decoupled weight decay [D].
  c.optim.grad_clip_norm = 1.0  # Global-norm gradient clipping.
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.tau_start = 1.0  # Gumbel temperature at step 0 [P].
  c.optim.tau_end = 0.1  # Gumbel temperature at the last step [P].
  # Top-level parameter names (prefixes) that get no updates, e.g. ('item_encoder',
  # 'codebook_', 'gamma_quantizer') for the Two-Stage baseline's second stage.
  c.optim.frozen = ()
  # Pre-trained encoders: freeze the token embeddings and the bottom N transformer layers
  # (of the shared encoder and any separate item tower) [D]; 0 trains the whole encoder.
  # Cuts a CPU step's backward pass and keeps the low layers' pre-trained features.
  c.optim.freeze_encoder_layers = 0

  # ---------------------------------------------------------------- training
  c.train = ml_collections.ConfigDict()
  c.train.global_batch_size = 128  # Examples per step over all hosts [P].
  c.train.num_steps = 1500  # Total optimisation steps.
  c.train.seed = 0  # Seed of init, Gumbel noise and dropout.
  c.train.parallelism = "jit"  # 'jit' (NamedSharding over a ('data',) mesh) or 'pmap'.
  c.train.kmeans_init = True  # k-means codebook initialisation before training [P].
  c.train.kmeans_iters = 20  # Lloyd iterations per level.
  c.train.kmeans_items = 5000  # Item embeddings used for k-means (at most).
  c.train.log_every = 50  # Steps between metric lines.
  c.train.checkpoint_every = 500  # Steps between checkpoints.
  c.train.eval_every = 500  # Steps between validation passes (0 = never).
  # data.history_repr 'codes' / 'embedding': steps between recomputing every item's SID
  # and embedding (the history table requests read) with the current parameters.
  c.train.history_refresh_every = 100
  # With every encoder parameter frozen (and dropout off, history as text) the encoder is
  # a constant: encode the catalogue and the training requests once and let each step run
  # only the quantizer, decoder and losses (dgi_jax/encoder_cache.py). With only the
  # bottom optim.freeze_encoder_layers frozen (a BERT-family encoder), cache those layers'
  # output and run the top layers from it. The states are held in host memory in
  # encoder_cache_dtype ('bfloat16' or 'float32', which reproduces the uncached steps
  # exactly at twice the memory).
  c.train.cache_frozen_encoder = True
  c.train.encoder_cache_dtype = "bfloat16"
  # A folder that keeps that cache across processes, under a digest of the frozen weights
  # and the data it encodes (one cache: saving one removes the others there); a later run
  # maps it back instead of encoding again. Empty: memory only. `dgi benchmark` uses
  # <workdir>/encoder_cache.
  c.train.encoder_cache_dir = ""
  c.train.best_metric = "hit@10"  # Validation metric that picks the best checkpoint.
  c.train.init_from = ""  # Work directory (or checkpoint dir) to initialise params from.
  # With init_from: replace its codebooks by k-means over the loaded encoder's item
  # embeddings (a pre-trained / warmed-up encoder, as the paper's k-means init assumes).
  c.train.init_from_kmeans = False
  c.train.distributed = False  # Call jax.distributed.initialize() at start.

  # ---------------------------------------------------------------- evaluation
  c.eval = ml_collections.ConfigDict()
  c.eval.beam_size = 10  # Beams of the constrained SID search (paper: 1..20) [P].
  c.eval.k = 20  # Items returned per request; metrics are reported up to @20 [P].
  c.eval.batch_size = 64  # Requests per search call (fixed: one compilation).
  c.eval.item_batch_size = 512  # Items per embedding / quantization call when indexing.
  c.eval.bucket_cap = 0  # Items ranked per SID bucket (0 = all; caps search memory).
  # Order of the beams' items: 'beam' (beam score, then cosine inside a SID bucket: the
  # paper's), 'cosine' (cosine over the union of the beams' items), 'blend' (beam score
  # + cosine_weight * cosine) or 'sid' (the decoder's log P(item's whole SID | request) +
  # cosine_weight * cosine: with candidate_level it orders the items under a prefix by
  # their remaining codes too; a decoder pass per candidate). Each costs O(beam * bucket),
  # not O(catalogue).
  c.eval.ranking = "beam"
  c.eval.cosine_weight = 10.0  # The cosine's weight with ranking='blend' or 'sid'.
  # 'sid' runs the decoder over the candidates of highest cosine only, this many (at
  # least eval.k), instead of over every candidate: 0 = all.
  c.eval.sid_rerank_depth = 0
  # Candidates: the items of the beams' SIDs (0, the paper's), or (t in 1..m-1) the search
  # stops at the best beam_size prefixes of t codes and every item under them competes: a
  # wider net when the decoder finds the right region of the index more often than the
  # exact SID. Cost O(beam * items per t-code prefix; ~N / K_1 at t=1), m - t fewer
  # decoder steps.
  c.eval.candidate_level = 0
  # A candidate budget C > 0: of the beam_size best beams (SIDs, or prefixes with a
  # candidate_level), the fewest that hold at least C items, in the decoder's order; the
  # beam size is then the most it may take. Indexes whose regions differ in size then rank
  # about C items each, where a fixed beam ranks beam x (items per region): methods
  # compared at one cost, and a serving knob for it. 0: every beam's items.
  c.eval.candidate_budget = 0
  # Leave the request's history items (its data.max_history most recent) out of every
  # ranking: a recommender does not propose what the user just had. Off: the published
  # protocols (TIGER's Beauty split) rank the whole catalogue.
  c.eval.exclude_history = False
  # Every cosine order of items (the beams' candidates, the encoder's exact ranking, the
  # dense baselines) adds w x ln(1 + f(i)), f(i) the training requests whose target is
  # item i. In-batch InfoNCE learns cos / tau = log p(i | q) - log p(i) + c(q): the
  # popularity its negatives divide out, which ranking the catalogue for the next item
  # needs back (dgi_jax/popularity.py). 0: the cosine alone (the paper's).
  c.eval.popularity_weight = 0.0
  c.eval.num_popularity_buckets = 5  # Equal-count buckets B0 (head) .. B4 (tail) [P].
  # Validation during training also computes the decoder and encoder diagnostics (one
  # extra jitted pass per batch; `dgi eval` always does): their level1_information and
  # encoder_dense_hit@10 join the logged validation metrics.
  c.eval.validation_diagnostics = True

  c.lock()
  return c
