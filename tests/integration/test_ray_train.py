"""Ray Train around THE loop, on the session's local Ray (2 CPUs): DDP equivalence, fault tolerance, run names.

Tiny seeded BERT (hidden 64), synthetic data, dropout 0, max_len 48 tokens: each run takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import loop_hooks
import pytest
import ray.cloudpickle
from loop_hooks import FailOnceAtStep, StepTracer

from raw_rm.config import Config, ConfigError, load_config

pytestmark = pytest.mark.integration
# Ray workers cannot import tests/: the hooks travel by value.
ray.cloudpickle.register_pickle_by_value(loop_hooks)

# 96 synthetic prompts split (by prompt hash) into 88 training and 8 validation pairs: 88 = 11 x 8, so every
# global batch of 8 is full and one worker with batch 8 sees exactly the pairs that two workers with batch 4 see.
BASE = [
    "model.dropout=0.0",
    "data.synthetic.n_prompts=96",
    "data.max_len_tokens=48",
    "train.lr=0.001",
    "train.warmup_ratio=0.0",
    "train.precision=fp32",
    "train.log_every_steps=1",
    "train.progress=false",
    "train.num_threads=1",
    "mlflow.enabled=false",
    "ray.cpus_per_worker=1",
]
N_TRAIN = 88


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny BERT with every dropout at 0, saved as a Hugging Face folder (with its reward head).

    "tiny-bert" keeps BERT's internal dropout (0.1); without it training is deterministic, so 1 and 2 workers
    can be compared step by step instead of statistically.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    from raw_rm.models.backbones import backbone_config, load_tokenizer

    tok = load_tokenizer("tiny-bert")
    config = backbone_config("tiny-bert", tok)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    out = tmp_path_factory.mktemp("tiny_bert_nodrop")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture()
def make_cfg(tiny_bert_dir: str, tmp_path: Path):
    def make(name: str, *overrides: str) -> Config:
        return load_config(
            None, [*BASE, f"model.backbone={tiny_bert_dir}", f"train.output_dir={tmp_path / name}", *overrides]
        )

    return make


def _trace(trace_dir: Path) -> dict[int, list[dict]]:
    """rank -> the steps that made it into the final model: a restarted attempt replaces what followed its checkpoint."""
    out = {}
    for path in sorted(trace_dir.glob("rank*.jsonl")):
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        attempts: list[list[dict]] = []
        for e in entries:
            if not attempts or attempts[-1][0]["attempt"] != e["attempt"]:
                attempts.append([])
            attempts[-1].append(e)
        kept: list[dict] = []
        for attempt in attempts:
            first = attempt[0]["step"]
            kept = [e for e in kept if e["step"] < first] + attempt
        out[int(path.stem[len("rank") :])] = kept
    return out


def test_two_workers_match_one_worker_at_the_same_global_batch(ray_session, make_cfg, tmp_path: Path) -> None:
    from raw_rm.train.ray_train import train_ray

    one = train_ray(
        make_cfg("one", "ray.num_workers=1", "train.batch_size=8", "train.max_steps=6"),
        worker_callbacks=[StepTracer(tmp_path / "trace1")],
    )
    two = train_ray(
        make_cfg("two", "ray.num_workers=2", "train.batch_size=4", "train.max_steps=6"),
        worker_callbacks=[StepTracer(tmp_path / "trace2")],
    )
    t1, t2 = _trace(tmp_path / "trace1"), _trace(tmp_path / "trace2")
    assert [e["step"] for e in t1[0]] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in t2[0]] == [e["step"] for e in t2[1]] == [1, 2, 3, 4, 5, 6]
    for a, b0, b1 in zip(t1[0], t2[0], t2[1], strict=True):
        # the two ranks' shards are disjoint and together form the single worker's global batch
        assert not set(b0["indices"]) & set(b1["indices"])
        assert sorted(b0["indices"] + b1["indices"]) == sorted(a["indices"])
        assert len(b0["indices"]) == len(b1["indices"]) == 4
    loss1 = [e["loss"] for e in t1[0]]
    loss2 = [(b0["loss"] + b1["loss"]) / 2 for b0, b1 in zip(t2[0], t2[1], strict=True)]  # equal shards: plain mean
    # Step 1 runs the same weights on the same 8 pairs: identical loss, and DDP's averaged gradient has the
    # single worker's norm (a gradient summed over ranks instead of averaged would show a 2x norm).
    assert loss2[0] == pytest.approx(loss1[0], abs=1e-6)
    assert t2[0][0]["grad_norm"] == pytest.approx(t1[0][0]["grad_norm"], rel=1e-4)
    assert t2[1][0]["grad_norm"] == pytest.approx(t1[0][0]["grad_norm"], rel=1e-4)  # every rank holds the same gradient
    # Later steps differ only by float32 reduction order (gloo all-reduce vs one batched sum); measured here:
    # under 1e-6. Stated tolerance: 1e-5 absolute per step.
    assert max(abs(a - b) for a, b in zip(loss1, loss2)) < 1e-5, (loss1, loss2)
    assert one.metrics["val_loss"] == pytest.approx(two.metrics["val_loss"], abs=1e-5)
    assert (one.metrics["global_batch_size"], two.metrics["global_batch_size"]) == (8.0, 8.0)
    # The final models were saved to <output_dir>/model and rank responses alike. Reward differences, not raw
    # rewards: the pairwise loss gives the reward's offset no gradient, so Adam moves it by float noise alone.
    from raw_rm.inference import RewardModelInference

    def delta(model_dir: str) -> float:
        rm = RewardModelInference(model_dir)
        rewards = rm.batch_predict(["How do I boil an egg?"] * 2, ["Boil it for 8 minutes.", "No idea, ask someone."])
        return float(rewards[0] - rewards[1])

    assert one.model_dir == str(tmp_path / "one" / "model")
    assert delta(one.model_dir) == pytest.approx(delta(two.model_dir), abs=1e-4)


def test_worker_failure_resumes_from_checkpoint_without_repeating_or_skipping(
    ray_session, make_cfg, tmp_path: Path
) -> None:
    from raw_rm.train.ray_train import train_ray

    # 2 workers x batch 4 = 8 pairs per step: 11 steps per epoch, 22 in two epochs; checkpoints every 2 steps;
    # step 7 fails once, so the group restarts from the checkpoint of step 6.
    cfg = make_cfg(
        "fail",
        "ray.num_workers=2",
        "train.batch_size=4",
        "train.epochs=2",
        "train.checkpoint_every_steps=2",
        "ray.max_failures=1",
        "ray.run_name=failing",
    )
    marker = tmp_path / "failed_once"
    result = train_ray(cfg, worker_callbacks=[StepTracer(tmp_path / "trace"), FailOnceAtStep(7, marker)])
    assert result.fit.steps == 22
    assert marker.read_text() == "failed once at step 7\n"  # the failure really happened
    raw = {r: [json.loads(x) for x in (tmp_path / "trace" / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    for r in (0, 1):
        attempts = list(dict.fromkeys(e["attempt"] for e in raw[r]))
        assert len(attempts) == 2, f"rank {r}: expected one restart, got attempts {attempts}"
        first_of_second = next(e["step"] for e in raw[r] if e["attempt"] == attempts[1])
        assert first_of_second == 7  # resumed right after the step-6 checkpoint
    trace = _trace(tmp_path / "trace")
    for r in (0, 1):
        assert [e["step"] for e in trace[r]] == list(range(1, 23))
    for epoch in (0, 1):
        seen: list[int] = []
        for r in (0, 1):
            seen += [i for e in trace[r] if e["epoch"] == epoch for i in e["indices"]]
        assert sorted(seen) == list(range(N_TRAIN)), f"epoch {epoch}: each training pair exactly once"


def test_run_names_refuse_silent_reload(make_cfg, tmp_path: Path) -> None:
    from raw_rm.train.ray_train import _run_name

    storage = tmp_path / "ray"
    (storage / "done").mkdir(parents=True)
    (storage / "done" / "raw_rm_finished.json").write_text("{}")
    cfg = make_cfg("names", "ray.run_name=done")
    with pytest.raises(
        ConfigError,
        match=r"^ray.run_name='done' exists under .*: pass --resume \(train.resume=true\) to continue it, or choose another name$",
    ):
        _run_name(cfg, str(storage))
    resume = make_cfg("names", "ray.run_name=done", "train.resume=true")
    with pytest.raises(ConfigError, match=r"^ray.run_name='done' already finished"):
        _run_name(resume, str(storage))
    with pytest.raises(
        ConfigError, match=r"^train.resume=true but no Ray Train run under .*empty to resume: set ray.run_name$"
    ):
        _run_name(make_cfg("names", "train.resume=true"), str(tmp_path / "empty"))
    assert _run_name(make_cfg("names"), str(storage)).startswith("raw_rm-")


# FSDP2 (ray.strategy=fsdp) on 2 CPU workers with gloo, against DDP at the same global batch of 8 pairs: batch 2 x
# accumulation 2 per worker (gradient sync skipped on the first micro-batch), validation every 2 steps (the best
# weights are gathered), checkpoints every 2 steps (the full state is gathered on rank 0), and a max gradient norm
# below this tiny model's gradient norms (about 0.002-0.006), so clipping scales every step.
FSDP_RUN = [
    "ray.num_workers=2",
    "train.batch_size=2",
    "train.grad_accum_steps=2",
    "train.max_steps=8",
    "train.eval_every_steps=2",
    "train.checkpoint_every_steps=2",
    "train.max_grad_norm=0.001",
]


@pytest.fixture(scope="module")
def ddp_and_fsdp(ray_session, tiny_bert_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from raw_rm.train.ray_train import train_ray

    root = tmp_path_factory.mktemp("fsdp")
    runs = {}
    for strategy in ("ddp", "fsdp"):
        cfg = load_config(
            None,
            [
                *BASE,
                f"model.backbone={tiny_bert_dir}",
                f"train.output_dir={root / strategy}",
                *FSDP_RUN,
                f"ray.strategy={strategy}",
            ],
        )
        result = train_ray(cfg, worker_callbacks=[StepTracer(root / f"trace_{strategy}")])
        runs[strategy] = {"cfg": cfg, "result": result, "trace": _trace(root / f"trace_{strategy}")}
    return runs


def test_fsdp_trains_like_ddp_at_the_same_global_batch(ddp_and_fsdp: dict) -> None:
    ddp, fsdp = ddp_and_fsdp["ddp"]["trace"], ddp_and_fsdp["fsdp"]["trace"]
    for trace in (ddp, fsdp):
        assert [e["step"] for e in trace[0]] == [e["step"] for e in trace[1]] == list(range(1, 9))
    for a, b in zip(ddp[0] + ddp[1], fsdp[0] + fsdp[1], strict=True):
        assert a["indices"] == b["indices"]  # the same shards in the same order
    # Step 1: same weights, same pairs: the same loss, and the logged norm of the sharded (DTensor) gradient equals
    # DDP's norm of the full averaged gradient on every rank. It is above train.max_grad_norm, so clipping acts.
    norm = ddp[0][0]["grad_norm"]
    assert norm > 0.001
    assert fsdp[0][0]["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert fsdp[1][0]["grad_norm"] == pytest.approx(norm, rel=1e-4)
    # Later steps differ by float32 reduction order (reduce-scatter of shards vs all-reduce). Measured here: at most
    # 3e-8 in loss and 3e-6 relative in gradient norm. Stated tolerance: 1e-5 absolute per step and rank in loss,
    # 1e-4 relative in gradient norm.
    for r in (0, 1):
        losses = [(a["loss"], b["loss"]) for a, b in zip(ddp[r], fsdp[r], strict=True)]
        assert max(abs(a - b) for a, b in losses) < 1e-5, losses
        assert [b["grad_norm"] for b in fsdp[r]] == pytest.approx([a["grad_norm"] for a in ddp[r]], rel=1e-4)
    m_ddp, m_fsdp = ddp_and_fsdp["ddp"]["result"].metrics, ddp_and_fsdp["fsdp"]["result"].metrics
    assert m_fsdp["val_loss"] == pytest.approx(m_ddp["val_loss"], abs=1e-5)
    assert m_fsdp["global_batch_size"] == 8.0


def test_fsdp_saves_a_plain_model_that_scores_like_the_trained_one(ddp_and_fsdp: dict) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from raw_rm.data import load_train_val
    from raw_rm.data.batching import PairCollator
    from raw_rm.models import load_model
    from raw_rm.train.loop import RewardModelTrainer

    run = ddp_and_fsdp["fsdp"]
    cfg, result = run["cfg"], run["result"]
    model, tokenizer = load_model(result.model_dir)
    # The in-memory sharded model's validation metrics (evaluated inside the workers, fp32) are reproduced by the
    # saved model through the same evaluation code: the gathered weights are the trained ones, none missing.
    train, val, _ = load_train_val(cfg, tokenizer=tokenizer)
    again = RewardModelTrainer(cfg, model, tokenizer, train, val, device="cpu").evaluate()
    for key in ("val_loss", "val_reward_mean", "val_accuracy"):
        assert again[key] == pytest.approx(result.metrics[key], abs=1e-5), key
    # Same format as DDP's: a plain Hugging Face folder that AutoModelForSequenceClassification opens, scoring as
    # raw_rm does, and the DDP-trained model's weights within float noise.
    hf = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    batch = PairCollator(tokenizer, max_len_tokens=48, input_kind="concat")(val)
    with torch.no_grad():
        logits = hf(**batch["features"]).logits[:, 0]
        rewards = model(**batch["features"]).rewards
        ddp_model, _ = load_model(ddp_and_fsdp["ddp"]["result"].model_dir)
        ddp_rewards = ddp_model(**batch["features"]).rewards
    assert torch.allclose(logits, rewards, atol=1e-6), (logits, rewards)
    delta, ddp_delta = rewards[: len(val)] - rewards[len(val) :], ddp_rewards[: len(val)] - ddp_rewards[len(val) :]
    assert torch.allclose(delta, ddp_delta, atol=1e-4), (delta, ddp_delta)


def test_fsdp_worker_failure_resumes_from_the_gathered_checkpoint(ddp_and_fsdp: dict, make_cfg, tmp_path: Path) -> None:
    from raw_rm.train.ray_train import train_ray

    # Step 5 fails once; the worker group restarts from the step-4 checkpoint: every rank loads the full model and
    # optimiser state rank 0 gathered, then continues. Steps 5-8 must then repeat the uninterrupted run's losses:
    # a lost Adam state, a shard loaded into the wrong rank or a wrong sampler position would change them.
    cfg = make_cfg("fsdp_fail", *FSDP_RUN, "ray.strategy=fsdp", "ray.max_failures=1", "ray.run_name=fsdp_failing")
    marker = tmp_path / "failed_once"
    result = train_ray(cfg, worker_callbacks=[StepTracer(tmp_path / "trace"), FailOnceAtStep(5, marker)])
    assert marker.read_text() == "failed once at step 5\n"
    raw = [json.loads(x) for x in (tmp_path / "trace" / "rank0.jsonl").read_text().splitlines()]
    attempts = list(dict.fromkeys(e["attempt"] for e in raw))
    assert len(attempts) == 2 and next(e["step"] for e in raw if e["attempt"] == attempts[1]) == 5
    resumed, reference = _trace(tmp_path / "trace"), ddp_and_fsdp["fsdp"]["trace"]
    for r in (0, 1):
        assert [e["step"] for e in resumed[r]] == list(range(1, 9))
        assert [e["indices"] for e in resumed[r]] == [e["indices"] for e in reference[r]]
        assert [e["loss"] for e in resumed[r]] == pytest.approx([e["loss"] for e in reference[r]], abs=1e-6)
    assert result.metrics["val_loss"] == pytest.approx(ddp_and_fsdp["fsdp"]["result"].metrics["val_loss"], abs=1e-6)


def test_fsdp_run_resumes_after_the_driver_gave_up(ddp_and_fsdp: dict, make_cfg, tmp_path: Path) -> None:
    import ray.train

    from raw_rm.train.ray_train import train_ray

    # No restarts allowed: the failure at step 5 ends the run (as a killed driver would leave it, checkpoint at
    # step 4). `raw-rm train --ray --resume ray.run_name=...` then continues it in a new TorchTrainer.
    run = [*FSDP_RUN, "ray.strategy=fsdp", "ray.run_name=fsdp_driver"]
    hooks = [StepTracer(tmp_path / "trace"), FailOnceAtStep(5, tmp_path / "failed_once")]
    with pytest.raises(ray.train.TrainingFailedError):
        train_ray(make_cfg("fsdp_driver", *run, "ray.max_failures=0"), worker_callbacks=hooks)
    result = train_ray(make_cfg("fsdp_driver", *run, "train.resume=true"), worker_callbacks=hooks)
    raw = [json.loads(x) for x in (tmp_path / "trace" / "rank1.jsonl").read_text().splitlines()]
    attempts = list(dict.fromkeys(e["attempt"] for e in raw))
    assert len(attempts) == 2 and [e["step"] for e in raw if e["attempt"] == attempts[1]] == [5, 6, 7, 8]
    resumed, reference = _trace(tmp_path / "trace"), ddp_and_fsdp["fsdp"]["trace"]
    for r in (0, 1):
        assert [e["step"] for e in resumed[r]] == list(range(1, 9))
        assert [e["loss"] for e in resumed[r]] == pytest.approx([e["loss"] for e in reference[r]], abs=1e-6)
    assert result.metrics["val_loss"] == pytest.approx(ddp_and_fsdp["fsdp"]["result"].metrics["val_loss"], abs=1e-6)


def test_fsdp_refuses_what_the_loop_cannot_shard(make_cfg) -> None:
    from raw_rm.train.ray_train import train_ray

    with pytest.raises(
        ConfigError, match=r"^ray.strategy=fsdp with train.precision=fp16: .*use train.precision=bf16 \(or fp32\)$"
    ):
        train_ray(make_cfg("fsdp", "ray.strategy=fsdp", "train.precision=fp16"))
    with pytest.raises(ConfigError, match=r"^ray.strategy=fsdp with loss.param_l2_coef > 0: "):
        train_ray(make_cfg("fsdp", "ray.strategy=fsdp", "loss.param_l2_coef=0.01"))
