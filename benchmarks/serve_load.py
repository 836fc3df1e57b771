"""Serving benchmark: raw_rm's Ray Serve deployment vs a plain per-request FastAPI server, same model and texts.

    python benchmarks/serve_load.py                       # MiniLM, HH-RLHF harmless texts, concurrency 1/16/64
    python benchmarks/serve_load.py --requests 40 200 400 --backbone tiny-bert   # quicker smoke run
    python benchmarks/serve_load.py --device cuda --precision bf16 --backbone /models/all-MiniLM-L6-v2 \
        --data /data/hh-rlhf-harmless --ingress-replicas 4 --requests 200 2000 8000  # a GPU machine, offline

    python benchmarks/serve_load.py --model /tmp/hh_rm/model --levels 64 --requests 600 --no-ensemble  # a trained model

In one run, on this machine, loopback only:

1. ceiling: texts/s of ``RewardModelInference.batch_predict`` in one process (batches of 64 sorted by length), at
   ``--precision`` and at the precision the Serve defaults choose;
2. plain: a FastAPI + uvicorn server scoring each request on its own in its event loop (the shape of
   OpenRLHF's reference reward server), in a subprocess, at ``--precision`` (fp32) and the same max length;
3. defaults: ``ServeConfig(models=[MODEL])`` as a first run gets it (only the port and cache off set): threads,
   precision, max length and HTTP front are raw_rm's own choices (printed from ``/v1/models``);
4. tuned: ``raw_rm.serve.app.build_app`` with this script's explicit settings (``--precision``, ``--torch-threads``...);
   ``--device cuda`` puts the plain server, the ceiling and the Serve setups on the GPU;
5. int8 (CPU): the model's int8 copy (``raw_rm.quantization.write_quantized``) served with the defaults, and the
   accuracy of fp32, bf16 and int8 on the held-out pairs of ``--data`` with the reward drift from fp32;
6. a 5-head shared-trunk ensemble on the tuned setup vs the single model (p50 latency; ``--no-ensemble`` skips it).

The model: ``--model DIR`` (a trained model folder, e.g. from ``raw-rm train``), else a fresh untrained model of
``--backbone`` that records a training length of 256 tokens (throughput does not depend on training; accuracy does).

Each request is one OpenRLHF ``/get_reward`` query (what the current OpenRLHF client sends) with a distinct
HH dialogue. Prints requests/s, p50 and p99 per concurrency level for both servers and the ratios; targets
are read from the printout, never asserted. The machine's load average is printed before and
after: other processes competing for the CPUs change every number.
"""

import argparse
import asyncio
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_machine.py
from _machine import machine_facts  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless"


# ------------------------------------------------------------------------------------------ inputs
def data_file(path: Path) -> Path:
    """The JSONL(.gz) file for ``--data``: the file itself, or in a directory pairs.jsonl.gz or its first *.jsonl[.gz]."""
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("pairs.jsonl*")) or sorted(path.glob("*.jsonl.gz")) + sorted(path.glob("*.jsonl"))
        if found:
            return found[0]
    raise SystemExit(f"--data {path}: expected a .jsonl / .jsonl.gz file of HH dialogues or a directory holding one")


def load_texts(path: Path, limit: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs from HH records: each record's chosen and rejected dialogues.

    A record is ``{"chosen": DIALOGUE, "rejected": DIALOGUE}`` (Anthropic HH: "\\n\\nHuman: ... \\n\\nAssistant: ...")
    or ``{"prompt": ..., "chosen": RESPONSE, "rejected": RESPONSE}``.
    """
    from raw_rm.data.formats import split_hh_dialogue

    rows: list[tuple[str, str]] = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            for key in ("chosen", "rejected"):
                if isinstance(record.get("prompt"), str):
                    rows.append((record["prompt"], record[key]))
                else:
                    rows.append(split_hh_dialogue(record[key]))
            if len(rows) >= limit:
                break
    if not rows:
        raise SystemExit(f"--data {path}: no records")
    return rows[:limit]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_models(root: Path, backbone: str) -> tuple[str, str]:
    """An untrained single model and a 5-head shared-trunk model (throughput does not depend on training), both
    recording 256 tokens (``raw-rm train``'s default) as their training length."""
    from raw_rm.config import ModelConfig
    from raw_rm.models import build_model, save_model

    single, tok = build_model(ModelConfig(backbone=backbone))
    single.metadata.record_training_input(256)
    save_model(single, tok, root / "single")
    multi, tok = build_model(ModelConfig(backbone=backbone, arch="multihead", num_heads=5))
    multi.metadata.record_training_input(256)
    save_model(multi, tok, root / "multihead5")
    return str(root / "single"), str(root / "multihead5")


def heldout_accuracy(model_dir: str, int8_dir: str, data: Path) -> dict[str, float]:
    """fp32, bf16 and int8 on the held-out pairs of ``data`` (the split ``raw-rm train`` makes by default):
    accuracy of each and the largest / mean |reward - fp32 reward| in units of the model's reward_std."""
    import numpy as np
    import torch

    from raw_rm.config import Config, apply_overrides
    from raw_rm.data import load_train_val
    from raw_rm.inference import RewardModelInference
    from raw_rm.quantization import load_for_inference

    fp32 = RewardModelInference(model_dir, cache_size=0, batch_size=64)
    _, val, _ = load_train_val(apply_overrides(Config(), {"data.train_path": str(data)}), tokenizer=fp32.tokenizer)
    prompts = [p.prompt for p in val] * 2
    responses = [p.chosen for p in val] + [p.rejected for p in val]
    scorers = {
        "fp32": fp32,
        "bf16": RewardModelInference(
            model_dir, cache_size=0, batch_size=64, precision="bf16", precision_tolerance=float("inf")
        ),
        "int8": load_for_inference(int8_dir, cache_size=0, batch_size=64),
    }
    rewards = {name: rm.batch_predict(prompts, responses) for name, rm in scorers.items()}
    std = float(fp32.metadata.reward_std or 1.0)
    out: dict[str, float] = {"n_pairs": float(len(val)), "probe_drift_bf16": fp32.precision_drift(torch.bfloat16)}
    for name, r in rewards.items():
        out[f"accuracy_{name}"] = float((r[: len(val)] > r[len(val) :]).mean())
        out[f"max_drift_{name}"] = float(np.max(np.abs(r - rewards["fp32"])) / std)
        out[f"mean_drift_{name}"] = float(np.mean(np.abs(r - rewards["fp32"])) / std)
    return out


# --------------------------------------------------------------------------------------- the plain server
def run_plain_server(
    port: int, model_dir: str, max_len_tokens: int, precision: str, device: str, torch_threads: int | None
) -> None:
    """OpenRLHF's reference shape: FastAPI, each request scored on its own inside the handler.

    (No ``from __future__ import annotations`` in this file: FastAPI must see ``Request`` itself.)
    """
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from raw_rm.inference import RewardModelInference
    from raw_rm.serve.scoring import split_query

    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    engine = RewardModelInference(
        model_dir, cache_size=0, max_len_tokens=max_len_tokens, precision=precision, device=device
    )
    app = FastAPI()

    @app.post("/get_reward")
    async def get_reward(request: Request) -> JSONResponse:
        body = await request.json()
        pieces = [
            split_query(q, p or "") for q, p in zip(body["query"], body.get("prompts") or [None] * len(body["query"]))
        ]
        rewards = engine.batch_predict([h for h, _, _ in pieces], [t for _, t, _ in pieces]).tolist()
        return JSONResponse({"rewards": rewards, "scores": rewards, "extra_logs": {"reward_mean": rewards}})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------------------------------------- client
async def load(url: str, payloads: list[dict], concurrency: int) -> dict[str, float]:
    """Closed loop: ``concurrency`` clients post the payloads in order; requests/s, p50, p99 (ms), errors."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    first_error: list[str] = []
    indices = iter(range(len(payloads)))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in indices:
            start = time.perf_counter()
            async with session.post(url, json=payloads[i]) as resp:
                data = await resp.read()
                if resp.status != 200:
                    errors += 1
                    if not first_error:
                        first_error.append(f"{resp.status} {data[:200]!r}")
            latencies.append((time.perf_counter() - start) * 1000.0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    if first_error:
        print(f"    first error: {first_error[0]}", flush=True)
    return {
        "rps": len(payloads) / wall,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))],
        "errors": float(errors),
    }


def payloads_for(texts: list[tuple[str, str]], start: int, n: int) -> list[dict]:
    rows = [texts[(start + i) % len(texts)] for i in range(n)]
    return [{"query": [p + " " + r], "prompts": [p], "labels": [""]} for p, r in rows]


def run_levels(
    url: str, texts: list[tuple[str, str]], levels: list[int], counts: list[int]
) -> dict[int, dict[str, float]]:
    results = {}
    offset = 0
    asyncio.run(load(url, payloads_for(texts, 0, 8), 4))  # warm-up
    for concurrency, n in zip(levels, counts):
        results[concurrency] = asyncio.run(load(url, payloads_for(texts, offset, n), concurrency))
        offset += n
        r = results[concurrency]
        print(
            f"    concurrency {concurrency:>3}: {r['rps']:7.1f} req/s  p50 {r['p50']:8.1f} ms  p99 {r['p99']:8.1f} ms  errors {int(r['errors'])}",
            flush=True,
        )
    return results


def get_json(url: str, timeout_s: float = 60.0) -> dict:
    """GET a JSON body with the standard library (the GPU machine may lack httpx), never through an HTTP proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def wait_healthy(url: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            get_json(url, timeout_s=5)
            return
        except (OSError, ValueError):  # refused, 404/503 (HTTPError is an OSError), half-started body
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {timeout_s} s")


# ------------------------------------------------------------------------------------------------ main
def ceiling_texts_per_s(
    model_dir: str, texts: list[tuple[str, str]], *, precision: str, device: str, max_len_tokens: int
) -> tuple[float, str]:
    """One process, batches of 64 sorted by length: (texts/s, the precision that ran)."""
    from raw_rm.quantization import load_for_inference

    engine = load_for_inference(
        model_dir, cache_size=0, batch_size=64, precision=precision, device=device, max_len_tokens=max_len_tokens
    )
    engine.batch_predict([p for p, _ in texts[:64]], [r for _, r in texts[:64]])  # warm-up
    start = time.perf_counter()
    engine.batch_predict([p for p, _ in texts], [r for _, r in texts])  # ends with .cpu(): the GPU has finished
    return len(texts) / (time.perf_counter() - start), engine.precision


def serve_setup(
    base: str, app: object, texts: list[tuple[str, str]], levels: list[int], counts: list[int], title: str
) -> tuple[dict, dict, dict]:
    """Deploy ``app``, print what it chose (``/v1/models``), load it; (results per level, member stats, model info)."""
    from ray import serve

    from raw_rm.serve.frontend import describe_member

    serve.run(app, name="bench", route_prefix="/")
    wait_healthy(f"{base}/healthz")
    models = get_json(f"{base}/v1/models", timeout_s=300)
    info = models["data"][0]
    print(
        f"{title} (HTTP front {models['http_frontend']}, {models['ingress_replicas']} ingress replica(s)):", flush=True
    )
    for line in describe_member(info):
        print(f"    {line}")
    results = run_levels(f"{base}/get_reward", texts, levels, counts)
    stats = get_json(f"{base}/stats")
    member, ingress = stats["members"]["member0"], stats["ingress"]
    print(
        f"    mean batch size {member['mean_batch_size']:.1f} texts over {member['batches']} batches; "
        f"{ingress['mean_requests_per_call']:.1f} requests per member call"
    )
    # delete before the next setup: a redeploy would leave this one's replicas draining (30 s with the haproxy
    # front) beside the next one's while it is measured
    serve.delete("bench")
    return results, member, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="a trained model folder (default: a fresh untrained --backbone model)"
    )
    parser.add_argument(
        "--backbone",
        default="minilm",
        help="model backbone without --model: minilm (the packaged all-MiniLM-L6-v2), tiny-bert, or a local HF model directory",
    )
    parser.add_argument(
        "--data", type=Path, default=DATA, help="HH dialogues: a .jsonl / .jsonl.gz file or a directory holding one"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda", "auto"],
        help="where all setups run the model (auto = cuda if available)",
    )
    parser.add_argument(
        "--member-gpus", type=float, default=0.25, help="Serve, --device cuda: GPU fraction reserved per member replica"
    )
    parser.add_argument(
        "--frontend",
        default="auto",
        choices=["proxy", "haproxy", "auto"],
        help="Serve's HTTP front (ServeConfig.http_frontend) for every Serve setup: auto (the default's choice), haproxy or proxy",
    )
    parser.add_argument(
        "--ingress-replicas", type=int, default=1, help="tuned Serve: HTTP ingress replicas (more for many CPU cores)"
    )
    parser.add_argument(
        "--member-batches",
        type=int,
        default=None,
        help="tuned Serve: forwards in flight per member replica (default ServeConfig's)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="CPU: torch threads of the ceiling, the plain server and each tuned member (default: all cores)",
    )
    parser.add_argument(
        "--ingress-batches",
        type=int,
        default=None,
        help="tuned Serve: member calls in flight per ingress replica (0 = one call per request; default ServeConfig's)",
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64], help="client concurrency levels")
    parser.add_argument("--requests", type=int, nargs="+", default=[60, 320, 640], help="requests per level")
    parser.add_argument(
        "--max-len-tokens",
        type=int,
        default=None,
        help="token limit of the plain server, the ceiling and tuned Serve (default: the model's training length)",
    )
    parser.add_argument("--max-batch-size", type=int, default=64, help="tuned Serve: texts per batched forward")
    parser.add_argument(
        "--batch-wait-s",
        type=float,
        default=None,
        help="tuned Serve: member batch wait timeout (default ServeConfig's)",
    )
    parser.add_argument("--ceiling-texts", type=int, default=512, help="texts for the one-process ceiling")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "auto"],
        help="forward precision of the plain server, the first ceiling and tuned Serve",
    )
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 model (always skipped on cuda)")
    parser.add_argument("--no-ensemble", action="store_true", help="skip the 5-head ensemble")
    parser.add_argument(
        "--no-accuracy", action="store_true", help="with --model: skip the held-out accuracy of fp32, bf16 and int8"
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write machine facts and every number here (run_all.py reads it)",
    )
    parser.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--plain-model", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        run_plain_server(
            args.port, args.plain_model, args.max_len_tokens, args.precision, args.device, args.torch_threads
        )
        return 0
    if len(args.requests) != len(args.levels):
        parser.error("--requests needs one count per --levels entry")

    import numpy as np
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    gpu = f", gpu {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""
    print(
        "machine:",
        ", ".join(f"{k} {v}" for k, v in machine_facts().items()),
        f"precision {args.precision}, device {args.device}{gpu}",
        flush=True,
    )
    data = data_file(args.data)
    texts = load_texts(data, max(sum(args.requests) + 16, args.ceiling_texts))
    lengths = [len(p) + len(r) for p, r in texts]
    root = Path(tempfile.mkdtemp(prefix="serve_load_"))
    untrained_single, multi_dir = (
        build_models(root, args.backbone) if args.model is None or not args.no_ensemble else ("", "")
    )
    single_dir = args.model or untrained_single
    from raw_rm.inference import RewardModelInference
    from raw_rm.quantization import write_quantized

    max_len = RewardModelInference(single_dir, cache_size=0, max_len_tokens=args.max_len_tokens).max_len_tokens
    print(
        f"data: {data}, {len(texts)} HH dialogues, mean {np.mean(lengths):.0f} characters; model {single_dir}; "
        f"max_len_tokens {max_len} (plain, ceiling, tuned)"
    )
    do_int8 = args.device == "cpu" and not args.no_int8
    int8_dir = str(write_quantized(single_dir, root / "int8")) if do_int8 else ""

    # 1. ceilings: one process, batches of 64 sorted by length
    sample = texts[: args.ceiling_texts]
    ceilings: dict[str, float] = {}
    ceiling, _ = ceiling_texts_per_s(
        single_dir, sample, precision=args.precision, device=args.device, max_len_tokens=max_len
    )
    ceilings[args.precision] = ceiling
    auto_ceiling, auto_precision = ceiling_texts_per_s(
        single_dir, sample, precision="auto", device=args.device, max_len_tokens=max_len
    )
    ceilings[auto_precision] = auto_ceiling
    if do_int8:
        ceilings["int8"] = ceiling_texts_per_s(
            int8_dir, sample, precision="auto", device="cpu", max_len_tokens=max_len
        )[0]
    print(
        "ceiling (one process, batch 64 sorted by length): "
        + ", ".join(f"{k} {v:.1f}" for k, v in ceilings.items())
        + " texts/s",
        flush=True,
    )

    # 2. plain per-request FastAPI server in its own process
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--plain-server",
            "--port",
            str(port),
            "--plain-model",
            single_dir,
            "--max-len-tokens",
            str(max_len),
            "--precision",
            args.precision,
            "--device",
            args.device,
        ]
        + (["--torch-threads", str(args.torch_threads)] if args.torch_threads else [])
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz")
        print(f"plain FastAPI + uvicorn, one forward per request ({args.precision}):", flush=True)
        plain = run_levels(f"http://127.0.0.1:{port}/get_reward", texts, args.levels, args.requests)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    # 3. - 6. Serve setups on one Ray
    from raw_rm.serve.frontend import prepare_ray

    frontend = prepare_ray(args.frontend, ray="start")  # before Ray (and Serve's constants) load: see launch.py
    import ray
    from ray import serve

    from raw_rm.config import ServeConfig
    from raw_rm.serve.app import build_app

    ray.init(include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    gpu_args = dict(device="auto", member_num_gpus=args.member_gpus) if args.device == "cuda" else {}
    defaults = dict(port=port, cache_size=0, **gpu_args)  # what a first run sets: where to listen; cache off to measure
    tuned = dict(
        port=port,
        max_len_tokens=max_len,
        max_batch_size=args.max_batch_size,
        cache_size=0,
        member_num_cpus=1.0,
        precision=args.precision,
        ingress_replicas=args.ingress_replicas,
        device=args.device,
        member_num_gpus=args.member_gpus if args.device == "cuda" else 0.0,
        torch_threads=(args.torch_threads or os.cpu_count()) if args.device == "cpu" else None,
    )
    if args.batch_wait_s is not None:
        tuned["batch_wait_timeout_s"] = args.batch_wait_s
    if args.member_batches is not None:
        tuned["max_concurrent_batches"] = args.member_batches
    if args.ingress_batches is not None:
        tuned["ingress_max_concurrent_batches"] = args.ingress_batches
    setups: dict[str, dict] = {}
    infos: dict[str, dict] = {}
    try:
        setups["defaults"], _, infos["defaults"] = serve_setup(
            base,
            build_app(ServeConfig(models=[single_dir], **defaults)),
            texts,
            args.levels,
            args.requests,
            "raw_rm serve, defaults",
        )
        setups["tuned"], batches, infos["tuned"] = serve_setup(
            base,
            build_app(ServeConfig(models=[single_dir], **tuned)),
            texts,
            args.levels,
            args.requests,
            "raw_rm serve, tuned",
        )
        if do_int8:
            setups["int8"], _, infos["int8"] = serve_setup(
                base,
                build_app(ServeConfig(models=[int8_dir], **defaults)),
                texts,
                args.levels,
                args.requests,
                "raw_rm serve, int8 model, defaults",
            )
        ensemble: dict[int, dict[str, float]] = {}
        if not args.no_ensemble:
            ensemble, _, _ = serve_setup(
                base,
                build_app(ServeConfig(models=[multi_dir], **tuned)),
                texts,
                args.levels[:2],
                args.requests[:2],
                "5-head shared-trunk ensemble, tuned",
            )
    finally:
        serve.shutdown()
        ray.shutdown()
    accuracy = heldout_accuracy(single_dir, int8_dir, data) if do_int8 and args.model and not args.no_accuracy else {}

    # summary
    print()
    top = args.levels[-1]
    precision_of = {"tuned": args.precision, "defaults": infos["defaults"]["precision"], "int8": "int8"}
    print(
        f"{'setup':>10} | {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} | {'vs plain':>8} | {'% ceiling':>9} (same precision) | at concurrency {top}"
    )
    rows = {"plain": plain, **setups}
    for name, res in rows.items():
        r = res[top]
        prec = precision_of.get(name, args.precision)
        share = f"{100 * r['rps'] / ceilings[prec]:>8.0f}% ({prec})" if prec in ceilings else "-"
        print(
            f"{name:>10} | {r['rps']:>7.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} | {r['rps'] / plain[top]['rps']:>7.2f}x | {share}"
        )
    for c in args.levels[:2] if ensemble else []:
        print(
            f"5-head ensemble p50 at concurrency {c}: {ensemble[c]['p50']:.1f} ms vs single {setups['tuned'][c]['p50']:.1f} ms "
            f"({ensemble[c]['p50'] / setups['tuned'][c]['p50']:.2f}x; target <= 1.3x)"
        )
    d = setups["defaults"][top]
    print(
        f"targets (2-core CPU): defaults / plain = {d['rps'] / plain[top]['rps']:.2f}x (>= 1.3x); defaults = "
        f"{100 * d['rps'] / ceilings[precision_of['defaults']]:.0f}% of the {precision_of['defaults']} ceiling (>= 90%); "
        f"p99 {d['p99']:.0f} ms vs plain {plain[top]['p99']:.0f} ms (<=)"
        + (f"; int8 / plain = {setups['int8'][top]['rps'] / plain[top]['rps']:.2f}x (>= 1.6x)" if do_int8 else "")
    )
    if accuracy:
        print(
            f"held-out accuracy on {int(accuracy['n_pairs'])} pairs: "
            + ", ".join(
                f"{k} {100 * accuracy[f'accuracy_{k}']:.1f}% (reward drift from fp32: max {accuracy[f'max_drift_{k}']:.4f}, "
                f"mean {accuracy[f'mean_drift_{k}']:.4f} reward_std)"
                for k in ("fp32", "bf16", "int8")
            )
            + f"; bf16 drift on the probe texts {accuracy['probe_drift_bf16']:.4f} reward_std"
        )
    print("load average after:", " ".join(f"{x:.1f}" for x in os.getloadavg()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine_facts(),
                    "frontend": frontend,
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "ceiling_texts_per_s": ceiling,
                    "ceilings": ceilings,
                    "levels": args.levels,
                    "max_len_tokens": max_len,
                    "plain": {str(c): v for c, v in plain.items()},
                    "raw_rm": {str(c): v for c, v in setups["tuned"].items()},
                    **{name: {str(c): v for c, v in res.items()} for name, res in setups.items() if name != "tuned"},
                    "choices": infos,
                    "ensemble5": {str(c): v for c, v in ensemble.items()},
                    "mean_batch_size": batches["mean_batch_size"],
                    "accuracy": accuracy,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
