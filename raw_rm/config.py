"""One typed config tree for every raw_rm job, and the one loader that fills it.

Precedence: dataclass defaults < YAML file < ``key.sub=value`` overrides. Unknown keys and wrong
types fail naming the file and the dotted key, suggesting the closest known name, with every problem
of one load reported in a single error.

    cfg = load_config("raw_rm/configs/default.yaml", ["loss.contrastive_tau=0.5"])
    cfg.loss.contrastive_tau  # 0.5

The same object reaches every consumer: Ray Train workers rebuild it with ``config_from_dict(asdict(cfg))``;
Tune applies its sampled points as dotted overrides with ``apply_overrides``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A config file or override is wrong; the message lists every problem found."""


# --------------------------------------------------------------------------------------- sections
@dataclass
class SyntheticConfig:
    n_prompts: int = 1200  # number of synthetic prompts (each yields one pair, one group, ratings)
    group_size: int = 4  # responses per prompt in the k-wise groups
    noise: float = 1.0  # label noise: the scale dividing latent reward gaps when labels are sampled (Bradley-Terry); 0 = labels always follow the latent reward
    seed: int = 0  # generator seed: the same seed gives the same data set
    annotators: int = 0  # > 0: each pair's weight = share of this many simulated annotators (Bradley-Terry votes on the latent reward, own RNG) agreeing with its label; 0 = no weights


@dataclass
class DataConfig:
    train_path: str | None = None  # file, directory saved by `datasets`, or Hub name; None = synthetic default
    eval_path: str | None = None  # held-out file; None = a split of train_path by prompt hash
    format: Literal["auto", "standard", "conversational", "hh", "ranked", "rated"] = "auto"  # record format
    kind: Literal["pairs", "groups", "ratings"] = "pairs"  # what the trainer consumes
    val_fraction: float = 0.1  # share of prompts (by hash) that go to validation when eval_path is None
    max_len_tokens: int = 256  # prompt+response budget; the prompt is cut from the left, the response keeps its end
    limit: int | None = None  # read at most this many records (None = all)
    strict: bool = False  # degenerate records (chosen == rejected, empty, group < 2) raise instead of being dropped
    split_seed: str = "raw_rm"  # salt of the prompt hash that assigns train/validation
    aspect: str | None = None  # ratings -> pairs/groups: the aspect compared (None = mean of the aspects)
    prompt_key: str = "prompt"  # the data set's name for the prompt field (OpenRLHF --prompt_key)
    chosen_key: str = "chosen"  # the data set's name for the preferred response (OpenRLHF --chosen_key)
    rejected_key: str = "rejected"  # the data set's name for the dispreferred response (OpenRLHF --rejected_key)
    responses_key: str = "responses"  # k-wise groups: the data set's name for the list of responses
    ranks_key: str = "ranks"  # k-wise groups: the data set's name for the ranks (0 = best)
    scores_key: str = "scores"  # k-wise groups: the data set's name for per-response scores (larger = better)
    response_key: str = "response"  # ratings: the data set's name for the rated response
    ratings_key: str = "ratings"  # ratings: the data set's name for the {aspect: rating} mapping
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: expected 0 <= value < 1, got {self.val_fraction}")
        if self.max_len_tokens < 8:
            raise ConfigError(f"data.max_len_tokens: expected >= 8, got {self.max_len_tokens}")


@dataclass
class ModelConfig:
    arch: Literal["concat", "separate", "cross_attention", "multi_objective", "hierarchical", "multihead"] = (
        "concat"  # architecture: prompt+response concatenated, separate encoders, cross-attention, aspect heads, segment heads, K-head ensemble
    )
    backbone: str = "minilm"  # "minilm" (packaged all-MiniLM-L6-v2), "tiny-bert", "tiny-gpt2", "tiny-qwen2", "tiny-llama", or any HF path/name (encoders; decoders such as Qwen2, Llama, Mistral, Gemma, GPT-2)
    pooling: Literal["auto", "cls", "mean", "last"] = (
        "auto"  # auto: HF head (CLS for encoders, last token for decoders)
    )
    dropout: float = 0.1  # dropout before the reward head(s)
    backbone_dropout: float | None = (
        None  # dropout inside the backbone (None = its own config; 0 = off, as TRL's disable_dropout)
    )
    train_layers: int | None = (
        None  # train only the backbone's top N layers (+ final norm, heads); embeddings and lower layers frozen. None = all, 0 = heads only
    )
    num_heads: int = 5  # members of the shared-trunk multi-head ensemble (arch=multihead)
    bootstrap: bool = False  # multihead: each head trains on its own Poisson(1) bootstrap mask
    aspects: list[str] = field(default_factory=lambda: ["helpfulness", "harmlessness", "honesty"])  # multi_objective
    aspect_weights: list[float] | None = None  # multi_objective combination weights; None = equal
    learned_gate: bool = False  # multi_objective: a gate computes the weights from the input instead
    fusion: Literal["concat", "product", "difference"] = "concat"  # separate encoder: how prompt/response fuse
    shared_encoder: bool = True  # separate encoder: one set of weights for prompt and response
    cross_attention_layers: int = 1  # cross_attention: layers of response->prompt attention
    length_head: bool = False  # ODIN (Chen et al. 2024): a second head trained to absorb response length (loss.length_corr_coef), dropped when saved; arch=concat
    init_from: str | None = None  # a saved raw_rm model directory to start from (fine-tuning, distillation)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = (
        "sdpa"  # attention kernel of the backbone: torch SDPA, the plain matmul (keeps T x T scores), or FlashAttention 2 (needs the flash-attn package and a GPU)
    )
    gradient_checkpointing: bool = False  # recompute each transformer block's activations in backward: activation memory of one block instead of all, about 1/3 more compute
    lora_rank: int = 0  # LoRA (peft) adapters of this rank on model.lora_targets, base frozen, reward head trained in full; merged into a plain model on save. 0 = full fine-tuning
    lora_alpha: float = 16.0  # LoRA scaling numerator: adapter output x lora_alpha / lora_rank
    lora_dropout: float = 0.0  # dropout on the LoRA adapters' input
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # Linear module names (suffixes) that get adapters; Llama/Qwen2/Mistral names by default, GPT-2 uses c_attn, c_proj, c_fc; BERT query, key, value, dense

    def __post_init__(self) -> None:
        if self.aspect_weights is not None and len(self.aspect_weights) != len(self.aspects):
            raise ConfigError(
                f"model.aspect_weights has {len(self.aspect_weights)} values but model.aspects has "
                f"{len(self.aspects)}: give one weight per aspect"
            )
        if self.num_heads < 1:
            raise ConfigError(f"model.num_heads: expected >= 1, got {self.num_heads}")
        if self.train_layers is not None and self.train_layers < 0:
            raise ConfigError(f"model.train_layers: expected >= 0 or null, got {self.train_layers}")
        if self.length_head and self.arch != "concat":
            raise ConfigError(f"model.length_head: implemented for arch=concat only, got arch={self.arch}")
        if self.lora_rank < 0:
            raise ConfigError(f"model.lora_rank: expected >= 0 (0 = full fine-tuning), got {self.lora_rank}")
        if self.lora_rank and not self.lora_targets:
            raise ConfigError("model.lora_targets: empty, but model.lora_rank > 0 needs at least one module name")
        if self.lora_rank and self.train_layers is not None:
            raise ConfigError(
                f"model.lora_rank={self.lora_rank} and model.train_layers={self.train_layers}: choose one way to "
                "limit what trains (LoRA adapters, or the top layers)"
            )


@dataclass
class LossConfig:
    name: str = "bt"  # bt | margin | contrastive | focal | triplet | label_smoothing | kwise_adjacent | kwise_all_pairs | plackett_luce
    contrastive_tau: float = (
        1.0  # contrastive loss: tau dividing reward differences, -log sigmoid(D / tau); searched by Tune
    )
    margin: float = 1.0  # margin / triplet: required reward gap
    gamma: float = 2.0  # focal: focusing exponent (0 = Bradley-Terry)
    epsilon: float = 0.1  # label_smoothing: probability mass on the flipped label (0 = Bradley-Terry)
    center_coef: float = 0.0  # reward centering: coefficient on (r_chosen + r_rejected)^2
    reward_l2_coef: float = 0.0  # L2 penalty on reward magnitude
    param_l2_coef: float = 0.0  # L2 penalty on trainable parameters (beyond AdamW weight decay)
    use_weights: bool = True  # weight each example by its annotator agreement / weight field when present
    uncertainty_weighting: bool = False  # down-weight pairs on which the ensemble heads disagree
    brier_coef: float = 0.0  # calibration term (pairs): coef * mean (1 - P)^2, P = the loss's P(chosen > rejected)
    soft_ece_coef: float = 0.0  # calibration term (pairs): coef * soft-binned, differentiable ECE of P over the batch
    soft_ece_bins: int = 10  # soft ECE: bins on [0, 1]
    soft_ece_softness: float = 0.01  # soft ECE: temperature of the soft bin assignment (smaller = closer to hard bins)
    confidence_penalty_coef: float = 0.0  # calibration term (pairs): -coef * entropy of P (penalises overconfidence)
    learned_temperature: bool = (
        False  # calibration (pairs): learn T on a held-out slice during training, loss on D / T, T stored in the model
    )
    calibration_fraction: float = 0.1  # learned_temperature: share of training prompts (by hash) held out to fit T
    temperature_lr: float = 0.02  # learned_temperature: learning rate of log T (its own AdamW group, no weight decay)
    length_corr_coef: float = 0.0  # length bias (pairs): coef * |pearson(reward, response tokens)| in the batch; with model.length_head ODIN's length loss
    orthogonal_coef: float = 0.0  # model.length_head: coef * |cos(reward head weights, length head weights)| (ODIN)

    def __post_init__(self) -> None:
        if self.contrastive_tau <= 0:
            raise ConfigError(f"loss.contrastive_tau: expected > 0, got {self.contrastive_tau}")
        if not 0.0 <= self.epsilon < 0.5:
            raise ConfigError(f"loss.epsilon: expected 0 <= value < 0.5, got {self.epsilon}")
        for name in ("brier_coef", "soft_ece_coef", "confidence_penalty_coef", "length_corr_coef", "orthogonal_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name}: expected >= 0, got {getattr(self, name)}")
        if self.soft_ece_bins < 2:
            raise ConfigError(f"loss.soft_ece_bins: expected >= 2, got {self.soft_ece_bins}")
        if self.soft_ece_softness <= 0:
            raise ConfigError(f"loss.soft_ece_softness: expected > 0, got {self.soft_ece_softness}")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ConfigError(f"loss.calibration_fraction: expected 0 < value < 1, got {self.calibration_fraction}")
        if self.temperature_lr <= 0:
            raise ConfigError(f"loss.temperature_lr: expected > 0, got {self.temperature_lr}")


@dataclass
class TrainConfig:
    epochs: int = 1  # passes over the training data
    max_steps: int | None = None  # stop after this many optimiser steps (None = epochs decide)
    batch_size: int = 16  # pairs (or groups) per micro-batch per worker
    grad_accum_steps: int = 1  # micro-batches per optimiser step
    lr: float = 5e-5  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_ratio: float = 0.1  # share of optimiser steps with linear warm-up
    schedule: Literal["cosine", "linear", "constant"] = "linear"  # decay after warm-up
    max_grad_norm: float | None = 1.0  # clip gradients by global norm (None = no clipping)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where the device runs it fast, else fp32
    seed: int = 0  # seeds torch, numpy, python and the batch sampler
    eval_every_steps: int | None = None  # validate every N optimiser steps (None = once per epoch)
    early_stopping_metric: str = "val_accuracy"  # metric watched for early stopping / best checkpoint
    early_stopping_mode: Literal["max", "min"] = "max"  # whether larger is better for that metric
    patience: int | None = None  # evaluations without improvement before stopping (None = never stop early)
    restore_best: bool = True  # load the best weights seen at the end of training
    checkpoint_every_steps: int | None = None  # save a resumable checkpoint every N steps (None = each epoch)
    output_dir: str = "runs/latest"  # where the trained model, checkpoints and metrics go
    resume: bool = False  # continue from the latest checkpoint in output_dir
    log_every_steps: int = 10  # step-metric reporting interval
    progress: bool = True  # show a progress bar (never on non-zero ranks or without a TTY)
    packing: bool = False  # decoder concat models: several sequences per row (position ids restart) up to data.max_len_tokens, so no pad tokens are computed; the same rewards as padded batches (raw_rm/data/packing.py)
    num_threads: int | None = (
        None  # torch intra-op threads on CPU (None = torch default; a Ray Train worker: the usable CPUs split among the workers on its node, at least ray.cpus_per_worker, not Ray's OMP_NUM_THREADS)
    )
    pin_malloc_threshold: bool = True  # Linux/glibc: fix malloc's mmap threshold at 128 KiB so freed activations go back to the OS instead of fragmenting the heap (peak RSS grew with run length without it; see raw_rm/runtime.py)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size: expected >= 1, got {self.batch_size}")
        if self.grad_accum_steps < 1:
            raise ConfigError(f"train.grad_accum_steps: expected >= 1, got {self.grad_accum_steps}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"train.patience: expected >= 1 or null, got {self.patience}")


@dataclass
class RayConfig:
    address: str | None = None  # None: a cluster if RAY_ADDRESS is set, else a local Ray started in-process
    num_workers: int = 1  # data-parallel Ray Train workers
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # CPUs reserved per worker
    strategy: Literal["ddp", "fsdp"] = (
        "ddp"  # ddp: a full model copy per worker; fsdp: torch FSDP2 shards weights, gradients and AdamW state over the workers, for models too big for one GPU (docs/operations.md)
    )
    cpu_offload: bool = False  # fsdp: keep the sharded weights, gradients and AdamW state in host memory (FSDP2 CPUOffloadPolicy); the GPU holds the blocks being computed. `raw-rm plan` shows what it saves
    max_failures: int = 1  # worker-group restarts from the last checkpoint before the run fails
    storage_path: str | None = None  # Ray Train storage (None = <train.output_dir>/ray)
    run_name: str | None = None  # Ray Train run name; reuse one to resume (None = unique per run)
    keep_checkpoints: int = 2  # best checkpoints kept, ranked by train.early_stopping_metric

    def __post_init__(self) -> None:
        if self.cpu_offload and self.strategy != "fsdp":
            raise ConfigError(
                f"ray.cpu_offload=true offloads FSDP shards: it needs ray.strategy=fsdp, got {self.strategy}"
            )


@dataclass
class MlflowConfig:
    enabled: bool = True  # track runs and register models
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"  # local SQLite store by default; any MLflow server URI works
    artifact_location: str | None = None  # experiment artifact root (None = ./mlruns/artifacts)
    experiment: str = "raw_rm"  # experiment name
    registered_model: str = "raw_rm-reward"  # registry name for trained models
    register: bool = True  # register the trained model as a new version with alias "candidate"


@dataclass
class GateConfig:
    min_accuracy: float | None = None  # promotion refused below this validation accuracy
    max_ece: float | None = None  # promotion refused above this calibration error (after temperature scaling)
    no_worse_than_champion: bool = True  # promotion refused if accuracy is below the current champion's


@dataclass
class EvalConfig:
    calibration_fraction: float = (
        0.5  # share of evaluated prompts (by hash) whose pairs fit the temperature T; 0 = keep the stored T
    )
    calibration_salt: str = "raw_rm/calibration"  # prompt-hash salt picking the calibration pairs, in every evaluation
    n_boot: int = 1000  # bootstrap resamples of the accuracy confidence intervals
    ood: dict[str, str] = field(default_factory=dict)  # out-of-distribution sets, name -> file, beside the main set

    def __post_init__(self) -> None:
        if not 0.0 <= self.calibration_fraction < 1.0:
            raise ConfigError(f"eval.calibration_fraction: expected 0 <= value < 1, got {self.calibration_fraction}")
        if self.n_boot < 1:
            raise ConfigError(f"eval.n_boot: expected >= 1, got {self.n_boot}")
        bad = [k for k, v in self.ood.items() if not isinstance(k, str) or not isinstance(v, str) or not k or not v]
        if bad:
            raise ConfigError(f"eval.ood: expected a mapping of set name -> file, got {bad[0]!r}: {self.ood[bad[0]]!r}")


@dataclass
class TuneConfig:
    space: dict[str, Any] = field(default_factory=dict)  # dotted config path -> distribution spec (see docs)
    num_samples: int = 8  # trials
    searcher: Literal["random", "optuna"] = "random"  # search algorithm
    metric: str = "val_accuracy"  # selection metric (val_accuracy, val_nll, val_ece, ...)
    mode: Literal["max", "min"] = "max"  # whether larger is better for the metric
    scheduler: Literal["asha", "none"] = "asha"  # early stopping of bad trials
    grace_period: int = 1  # ASHA: evaluations before a trial can be stopped
    reduction_factor: int = 2  # ASHA halving rate
    max_concurrent: int = 2  # trials running at once
    cpus_per_trial: float = 1.0  # CPU share per trial
    gpus_per_trial: float = 0.0  # GPU share per trial
    name: str | None = None  # experiment name; reuse with resume=true to continue (None = unique)
    storage_path: str | None = None  # Tune storage (None = <train.output_dir>/tune)
    resume: bool = False  # restore an interrupted experiment of the same name
    baseline: bool = True  # first trial = the base config's own values of the searched paths (measures the gain)


@dataclass
class EnsembleConfig:
    members: int = 3  # independently trained members (seeds or bootstrap resamples)
    bootstrap: bool = False  # each member trains on a bootstrap resample of the training pairs
    from_tune: str | None = None  # a Tune experiment folder: members = its top configurations


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ serve
@dataclass
class ServeConfig:
    """Its own root: ``load_config(path, root=ServeConfig)``; Serve YAML ``applications[].args`` carry these keys."""

    models: list[str] = field(
        default_factory=list
    )  # model dirs or models:/NAME@alias URIs; one member deployment each (a multi-head model gives K members)
    tracking_uri: str | None = (
        None  # MLflow store that resolves models:/ URIs (None = MLFLOW_TRACKING_URI or MLflow's default)
    )
    app_name: str = "raw_rm"  # Serve application name
    route_prefix: str = "/"  # HTTP route prefix of the application
    host: str = (
        "127.0.0.1"  # HTTP bind address; anything but loopback needs an API key or allow_unauthenticated_network
    )
    port: int = 8000  # HTTP port
    http_frontend: Literal["auto", "proxy", "haproxy"] = (
        "auto"  # what answers on host:port: Ray Serve's Python proxy, or HAProxy in front of ingress replicas that serve HTTP themselves (Ray's throughput-optimised mode: no shared Python hop, so ingress_replicas scale); auto = the environment's (proxy unless RAY_SERVE_THROUGHPUT_OPTIMIZED=1 and RAY_SERVE_ENABLE_HA_PROXY=1). Set when Ray starts: see raw_rm/serve/frontend.py
    )
    api_key_env: str = "RAW_RM_API_KEY"  # environment variable holding the API key (read where the app is built)
    api_key_file: str | None = (
        None  # file holding the API key (first line); used when the environment variable is unset
    )
    allow_unauthenticated_network: bool = (
        False  # serve a non-loopback address without a key (trusted private network only; logged loudly)
    )
    reward: Literal["mean", "lcb", "min", "mean_minus_lambda_var"] = "mean"  # which ensemble aggregate is "the reward"
    lam: float = 1.0  # lambda of mean - lambda * variance
    k: float = 1.0  # k of the lower confidence bound mean - k * std
    normalize: bool = (
        True  # members' rewards become (reward - reward_mean) / reward_std with each model's training statistics
    )
    max_len_tokens: int | None = (
        None  # token limit per prompt+response; None = the length the model was trained at (its metadata), else 512; capped by the tokenizer's limit; longer inputs keep the response end
    )
    max_batch_size: int = (
        64  # texts per member forward (and per ingress call to the members), gathered across concurrent requests
    )
    batch_wait_timeout_s: float = (
        0.005  # how long an idle member waits for a batch to fill (a busy one takes what queued during its forward)
    )
    max_concurrent_batches: int = 1  # forwards a member replica runs at once, in threads; 2 on a GPU overlaps one batch's tokenisation with another's forward
    ingress_max_concurrent_batches: int = 2  # member calls in flight per ingress replica; requests of <= max_batch_size texts that arrive meanwhile share the next call (0 = one call per request)
    ingress_batch_wait_timeout_s: float = (
        0.0  # how long an idle ingress waits for more requests before calling the members
    )
    max_ongoing_requests: int = 256  # concurrent requests per replica (Serve's default 5 starves batching)
    num_replicas: int = 1  # replicas per member deployment
    ingress_replicas: int = 1  # replicas of the HTTP ingress deployment
    member_num_cpus: float = 1.0  # CPUs reserved per member replica
    member_num_gpus: float = (
        0.0  # GPUs reserved per member replica; a fraction (0.25) lets several replicas and members share one GPU
    )
    device: Literal["cpu", "cuda", "auto"] = (
        "cpu"  # where members run: cuda needs member_num_gpus > 0; auto = cuda when member_num_gpus > 0 and the replica sees a GPU
    )
    ingress_num_cpus: float = 0.0  # CPUs reserved per ingress replica
    torch_threads: int | None = (
        None  # torch intra-op threads per member replica; None = the usable CPUs (affinity, cgroup quota) split among the app's member replicas, at least member_num_cpus (not Ray's OMP_NUM_THREADS=1)
    )
    precision: Literal["fp32", "bf16", "auto"] = (
        "auto"  # member forward precision; auto = bf16 where the CPU/GPU runs it natively and the model's rewards stay within raw_rm.inference.PRECISION_TOLERANCE of fp32, else fp32
    )
    cache_size: int = 65536  # per-replica LRU entries of (model version, prompt, response) -> member rewards; 0 = off
    max_items: int = (
        16384  # items per request (queries, items, pairs or responses); old OpenRLHF sends whole rollout batches
    )
    max_text_chars: int = (
        200000  # characters per text; /get_reward keeps the end of longer texts, other endpoints refuse them
    )
    max_body_bytes: int = 33554432  # request body limit (413 above it): the abuse guard
    member_retries: int = (
        3  # ingress retries of a member call whose replica died (the handle waits for the replacement)
    )
    drift_window: int = 2048  # recent rewards per member compared with the model's reference distribution (PSI, KS)

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_concurrent_batches",
            "max_ongoing_requests",
            "num_replicas",
            "ingress_replicas",
            "max_items",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("max_len_tokens", "max_text_chars", "max_body_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 8:
                raise ConfigError(f"{name}: expected >= 8, got {getattr(self, name)}")
        for name, low in (("cache_size", 0), ("member_retries", 0), ("drift_window", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name}: expected >= {low}, got {getattr(self, name)}")
        if self.device == "cuda" and self.member_num_gpus <= 0:
            raise ConfigError(
                "device: cuda needs member_num_gpus > 0 (Ray hides GPUs from replicas that reserve none), e.g. member_num_gpus=0.25"
            )
        for name in (
            "batch_wait_timeout_s",
            "ingress_batch_wait_timeout_s",
            "ingress_max_concurrent_batches",
            "member_num_gpus",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected >= 0, got {getattr(self, name)}")


# Keys whose meaning got a name of its own; the old spelling is refused, naming the new key (never silently mapped:
# a config that sets "temperature" meant one of several things).
RENAMED_KEYS: dict[str, tuple[str, str]] = {
    "loss.temperature": (
        "loss.contrastive_tau",
        "the contrastive loss's tau; the calibration temperature is fitted by raw-rm eval and stored in the model",
    ),
}


def renamed_key_message(path: str) -> str:
    """``loss.temperature: renamed to loss.contrastive_tau (...)`` for a key in :data:`RENAMED_KEYS`."""
    new, meaning = RENAMED_KEYS[path]
    return f"{path}: renamed to {new} ({meaning})"


# ----------------------------------------------------------------------------------------- loader
def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    root: type = Config,
    checks: Sequence[Callable[[Any], None]] = (),
) -> Any:
    """Build a config: defaults < YAML at ``path`` < ``key.sub=value`` overrides.

    ``checks`` validate parts of the built config that modules above this one own, e.g.
    ``raw_rm.tune.space.check_space`` (the search space against the loss registry); each raises ConfigError, and
    its lines join the error naming the file, so the whole file is checked by this one loader.

    Raises:
        ConfigError: naming the file and each wrong key, with every problem of the load in one message.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        raw = loaded or {}
    errors: list[str] = []
    for item in overrides or []:
        try:
            key, value = parse_override(item)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        _set_dotted(raw, key, value)
    cfg = _build(root, raw, prefix="", source=source, errors=errors)
    for check in checks if not errors else ():
        try:
            check(cfg)
        except ConfigError as exc:
            errors.extend(f"{source}: {line}" for line in str(exc).splitlines())
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


def config_from_dict(data: dict[str, Any], *, root: type = Config, source: str = "<dict>") -> Any:
    """Rebuild a config from ``asdict(cfg)`` (what Ray workers and checkpoints carry)."""
    errors: list[str] = []
    cfg = _build(root, copy.deepcopy(data), prefix="", source=source, errors=errors)
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


def apply_overrides(cfg: Any, overrides: dict[str, Any] | list[str]) -> Any:
    """A copy of ``cfg`` with dotted overrides applied (a dict of path -> value, or ``key=value`` strings)."""
    data = asdict(cfg)
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    for key, value in items:
        _set_dotted(data, key, value)
    return config_from_dict(data, root=type(cfg), source="<overrides>")


def parse_override(item: str) -> tuple[str, Any]:
    """``"loss.contrastive_tau=0.5"`` -> ``("loss.contrastive_tau", 0.5)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def _build(cls: type, raw: Any, *, prefix: str, source: str, errors: list[str]) -> Any:
    where = prefix.rstrip(".") or "<root>"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{source}: {where}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            if f"{prefix}{key}" in RENAMED_KEYS:
                errors.append(f"{source}: {renamed_key_message(f'{prefix}{key}')}")
                continue
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(fields)})"
            errors.append(f"{source}: {prefix}{key}: unknown key{hint}")
            continue
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = _build(hint_type, value, prefix=f"{prefix}{key}.", source=source, errors=errors)
            continue
        ok, coerced, expected = _coerce(value, hint_type)
        if not ok:
            errors.append(f"{source}: {prefix}{key}: expected {expected}, got {value!r}")
            continue
        kwargs[key] = coerced
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        errors.append(f"{source}: {exc}")
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch is a bug
        errors.append(f"{source}: {where}: {exc}")
    return cls()


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any) -> tuple[bool, Any, str]:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return True, value, "any value"
    if origin in (typing.Union, types.UnionType):
        names = []
        for arg in args:
            ok, coerced, name = _coerce(value, arg)
            if ok:
                return True, coerced, name
            names.append(name)
        return False, value, " or ".join(names)
    if tp is type(None):
        return value is None, None, "null"
    if origin is Literal:
        return value in args, value, "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        if not isinstance(value, list):
            return False, value, f"a list of {_name(args[0])}"
        out = []
        for item in value:
            ok, coerced, _ = _coerce(item, args[0])
            if not ok:
                return False, value, f"a list of {_name(args[0])}"
            out.append(coerced)
        return True, out, f"a list of {_name(args[0])}"
    if origin is dict:
        return isinstance(value, dict), value, "a mapping"
    if tp is bool:
        return isinstance(value, bool), value, "true or false"
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value, "an integer"
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as text, though everyone means a number
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value, "a number"
    if tp is str:
        return isinstance(value, str), value, "a string"
    return isinstance(value, tp), value, _name(tp)


def _name(tp: Any) -> str:
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))
