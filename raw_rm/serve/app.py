"""Ray Serve reward server: one batched deployment per ensemble member, a FastAPI ingress that fans out (edge).

    serve run raw_rm.serve.app:build_app models='["runs/latest/model"]' reward=lcb
    serve run serve_configs/ensemble.yaml           # or: raw-rm serve --config serve_configs/ensemble.yaml

Layout:

- ``RewardMember`` (one deployment per entry of ``ServeConfig.models``): loads a model directory or a
  ``models:/NAME@alias`` URI through :class:`raw_rm.inference.RewardModelInference` (which sorts each batch
  by length, truncates to the model's token limit keeping the response end, and keeps the per-replica LRU
  cache of (model version, prompt, response) -> member rewards). A :class:`raw_rm.serve.batcher.MicroBatcher`
  gathers texts from concurrent calls into one forward of up to ``max_batch_size`` texts, run in a thread so
  the next batch queues meanwhile (Serve's ``@serve.batch`` cut that queue into timer-sized batches: see the
  batcher's doc). ``device: cuda`` runs it on the GPU share ``member_num_gpus`` reserves. A shared-trunk
  multi-head model is one deployment whose answer has K columns.
- ``RewardIngress`` (FastAPI through ``@serve.ingress``): validates requests with ``raw_rm.serve.scoring``,
  calls every member concurrently through its handle (small requests from concurrent clients share one call:
  ``ingress_max_concurrent_batches``), normalises each member with its model's training
  statistics and aggregates (mean, std, min, mean - lambda var, lcb; ``ServeConfig.reward`` picks "the reward").

Endpoints: ``POST /get_reward`` (OpenRLHF's remote reward model), ``POST /score``, ``POST /compare``,
``POST /rank``, ``GET /healthz``, ``GET /v1/models``, ``GET /stats`` (request counts by endpoint and status,
batch sizes, cache hit rate, drift of the reward distribution against the model's training reference);
Ray Serve's Prometheus metrics carry ``raw_rm_*`` counters and histograms beside its own.

Client mistakes are a 4xx JSON ``{"error": "FIELD: what is wrong", "field": "FIELD"}``; a member replica
that dies is retried (the handle waits for its replacement) and answers 503 only when retries run out.
Authentication: see :mod:`raw_rm.serve.security`.

Everything the ingress methods use is defined above ``RewardIngress``, and this module has no
``from __future__ import annotations``: ``@serve.ingress`` pickles the FastAPI routes by value when the
class is decorated, so later module names and string annotations would not resolve in the replica.

Model swaps: ``build_app`` pins ``models:/NAME@alias`` to the version the alias points at now
(``models:/NAME/7``). After ``raw-rm registry promote`` or ``rollback`` moves the alias, deploy the same
config again (``raw-rm serve --config ...``, ``serve deploy``, or ``serve.run(build_app(cfg))``): the pinned
URI differs, so Serve rolls the member deployment, starting the new replica before it drains and stops the
old one, and requests keep being answered throughout. An unchanged alias changes nothing.
"""

import asyncio
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import metrics
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from raw_rm.config import ConfigError, ServeConfig, config_from_dict
from raw_rm.cpu_threads import plan_threads
from raw_rm.quantization import load_for_inference
from raw_rm.serve import scoring, security
from raw_rm.serve.batcher import MicroBatcher
from raw_rm.serve.frontend import HAPROXY_ENV_TEXT, describe_member, environment_frontend
from raw_rm.serve.scoring import MemberInfo, RequestError
from raw_rm.tracking import registry
from raw_rm.uncertainty import ReferenceDistribution, RollingDriftMonitor

log = logging.getLogger(__name__)

BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
LATENCY_BUCKETS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
RETRYABLE = (RayActorError, ReplicaUnavailableError)


def _n_texts(chunk: tuple[list[str], list[str]]) -> int:
    """Batch size of a (prompts, responses) chunk: its number of texts."""
    return len(chunk[1])


class MembersUnavailable(RuntimeError):
    """A member deployment could not answer after ``member_retries`` retries."""


# ------------------------------------------------------------------------------------------- member
@serve.deployment
class RewardMember:
    """One served model: raw member rewards (N, K) for (prompt, response) rows, batched across requests."""

    def __init__(self, source: str, cfg: dict[str, Any], display_source: str | None = None) -> None:
        self.cfg = config_from_dict(cfg, root=ServeConfig, source="serve args")
        use_cuda = self.cfg.device == "cuda" or (
            self.cfg.device == "auto" and self.cfg.member_num_gpus > 0 and torch.cuda.is_available()
        )
        self.threads, self.threads_reason = self._set_threads(cuda=use_cuda)
        resolver = None
        if source.startswith("models:/"):
            resolver = registry.uri_resolver(self.cfg.tracking_uri)
        self.source = display_source or source
        self.resolved = source
        self.engine = load_for_inference(
            source,
            resolver=resolver,
            batch_size=self.cfg.max_batch_size,
            cache_size=self.cfg.cache_size,
            precision=self.cfg.precision,
            device="cuda" if use_cuda else "cpu",
            max_len_tokens=self.cfg.max_len_tokens,
        )
        self.heads = int(self.engine.batch_predict_members(["warm-up"], ["warm-up"]).shape[1])
        self.engine.clear_cache()
        self.batcher = MicroBatcher(
            self._score_batch,
            max_batch_size=self.cfg.max_batch_size,
            batch_wait_timeout_s=self.cfg.batch_wait_timeout_s,
            max_concurrent_batches=self.cfg.max_concurrent_batches,
            size_fn=_n_texts,
        )
        self.batch_sizes: Counter[int] = Counter()
        self.m_batch = metrics.Histogram(
            "raw_rm_batch_size", description="texts per member batch", boundaries=BATCH_BUCKETS, tag_keys=("model",)
        )
        self.m_batch.set_default_tags({"model": self.source})  # Serve adds its tags to the dict: a fresh one each
        self.m_cache = metrics.Counter(
            "raw_rm_cache_lookups", description="member cache lookups", tag_keys=("model", "result")
        )
        self.m_cache.set_default_tags({"model": self.source})
        for line in describe_member(self._choices()):
            log.info("member %s: %s", self.source, line)

    def _set_threads(self, *, cuda: bool) -> tuple[int, str]:
        """torch intra-op threads for this replica (see raw_rm.cpu_threads), and why."""
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
            return self.cfg.torch_threads, "set explicitly (torch_threads)"

        reserved = ray.get_runtime_context().get_assigned_resources().get("CPU")
        sharing = 1 if cuda else len(self.cfg.models) * self.cfg.num_replicas
        plan = plan_threads(reserved, sharing)
        torch.set_num_threads(plan.threads)
        omp = os.environ.get("OMP_NUM_THREADS")
        return plan.threads, plan.reason + (
            f" (Ray's OMP_NUM_THREADS={omp} overridden)" if omp and int(omp) != plan.threads else ""
        )

    def _choices(self) -> dict[str, Any]:
        """What this replica runs with and why: threads, precision, max length (for logs and /v1/models)."""
        return {
            "torch_threads": self.threads,
            "torch_threads_reason": self.threads_reason,
            "precision": self.engine.precision,
            "precision_reason": self.engine.precision_reason,
            "max_len_tokens": self.engine.max_len_tokens,
            "max_len_reason": self.engine.max_len_reason,
            "device": str(self.engine.device),
            "replicas": self.cfg.num_replicas,
        }

    async def info(self) -> dict[str, Any]:
        meta = self.engine.metadata
        return {
            "source": self.source,
            "resolved": self.resolved,
            "version": str(self.engine.version),
            "heads": self.heads,
            "arch": getattr(self.engine.model, "arch", ""),
            "members_normalised": bool(getattr(self.engine.model, "is_ensemble", False)),
            "base_model": meta.base_model,
            "reward_mean": float(meta.reward_mean),
            "reward_std": float(meta.reward_std),
            "temperature": float(meta.temperature or 1.0),
            "reference": meta.reference.get("reward") if isinstance(meta.reference, dict) else None,
            **self._choices(),
        }

    async def score(self, prompts: list[str], responses: list[str]) -> list[list[float]]:
        """Raw member rewards, one row of K per input row, in input order."""
        size = self.cfg.max_batch_size
        parts = [(prompts[i : i + size], responses[i : i + size]) for i in range(0, len(responses), size)]
        results = await asyncio.gather(*(self.batcher.submit(part) for part in parts))
        return [row for part in results for row in part]

    async def _score_batch(self, chunks: list[tuple[list[str], list[str]]]) -> list[list[list[float]]]:
        prompts = [p for chunk_prompts, _ in chunks for p in chunk_prompts]
        responses = [r for _, chunk_responses in chunks for r in chunk_responses]
        before = self.engine.cache_info()
        # in a thread (tokenisation included): the event loop keeps queueing requests for the next batch meanwhile
        members = await asyncio.to_thread(self.engine.batch_predict_members, prompts, responses)
        after = self.engine.cache_info()
        self.batch_sizes[len(responses)] += 1
        self.m_batch.observe(len(responses))
        if after.hits > before.hits:
            self.m_cache.inc(after.hits - before.hits, tags={"result": "hit"})
        if after.misses > before.misses:
            self.m_cache.inc(after.misses - before.misses, tags={"result": "miss"})
        rows = members.tolist()
        out, start = [], 0
        for _, chunk_responses in chunks:
            out.append(rows[start : start + len(chunk_responses)])
            start += len(chunk_responses)
        return out

    async def stats(self) -> dict[str, Any]:
        cache = self.engine.cache_info()
        lookups = cache.hits + cache.misses
        n_batches = sum(self.batch_sizes.values())
        n_texts = sum(size * count for size, count in self.batch_sizes.items())
        return {
            "source": self.source,
            "batches": n_batches,
            "texts": n_texts,
            "mean_batch_size": n_texts / n_batches if n_batches else 0.0,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "cache": {
                "hits": cache.hits,
                "misses": cache.misses,
                "size": cache.size,
                "max_size": cache.max_size,
                "hit_rate": cache.hits / lookups if lookups else 0.0,
            },
        }


# ------------------------------------------------------------------------------------------ ingress
def _finite(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in stats.items()}


def _alias(source: str) -> str | None:
    if source.startswith("models:/") and "@" in source:
        return source.rpartition("@")[2]
    return None


def _monitor(reference: Any, window: int) -> RollingDriftMonitor | None:
    if not isinstance(reference, dict) or not reference:
        return None
    try:
        return RollingDriftMonitor(ReferenceDistribution.from_dict(reference), window=window)
    except ValueError as exc:
        log.warning("model reference distribution unusable for drift (%s)", exc)
        return None


class _State:
    """What the ASGI gate needs, set by the ingress replica that owns this process."""

    api_key: str | None = None
    max_body_bytes: int = ServeConfig().max_body_bytes


def _json_error(status: int, field: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=status, headers=headers)


class _Gate:
    """ASGI middleware before FastAPI: the API key (header or ``/k/KEY/`` path segment) and the body-size limit."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "") or ""
        path = scope["path"]
        inner = path[len(root) :] if root and path.startswith(root) else path
        supplied, stripped = security.split_path_key(inner)
        if supplied is not None:
            new_path = (path[: len(path) - len(inner)] + stripped) if inner != path else stripped
            scope = dict(scope, path=new_path, raw_path=new_path.encode("utf-8"))
            inner = stripped
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = _State.api_key
        if key is not None and inner not in security.OPEN_PATHS:
            presented = supplied if supplied is not None else security.header_key(headers)
            if not security.key_matches(presented, key):
                what = "missing API key" if presented is None else "wrong API key"
                response = _json_error(
                    401,
                    "authorization",
                    f"{what} (Authorization: Bearer KEY, X-API-Key, or /k/KEY/ in the path)",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > _State.max_body_bytes:
            response = _json_error(413, "body", f"too large: {length} bytes > max_body_bytes {_State.max_body_bytes}")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


api = FastAPI(title="raw_rm reward server", version="1", docs_url=None, redoc_url=None)
api.add_middleware(_Gate)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
    field = ".".join(str(part) for part in first.get("loc", ("body",)))
    return _json_error(422, field, str(first.get("msg", "invalid value")))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    field = "path" if exc.status_code in (404, 405) else "request"
    return _json_error(exc.status_code, field, f"{request.method} {request.url.path}: {exc.detail}")


@serve.deployment
@serve.ingress(api)
class RewardIngress:
    """HTTP front: validates, fans out to every member concurrently, aggregates, keeps request statistics."""

    def __init__(
        self,
        members: list[DeploymentHandle],
        cfg: dict[str, Any],
        api_key: str | None,
        names: list[str],
        resolved: list[str],
    ) -> None:
        # ``resolved`` (the pinned model URIs) is an argument so that a moved alias changes this deployment too:
        # the replacement replica reads the new members' metadata, and keeps re-reading it until every member
        # answers with the version it was deployed for (old member replicas may still answer during a rollout).
        self.cfg = config_from_dict(cfg, root=ServeConfig, source="serve args")
        host = self.cfg.host
        try:  # the address the HTTP proxy really binds (serve run / deploy take it from http_options)
            # a private Ray API, imported inside the try: should it move, the configured host is kept (warned below)
            from ray.serve.context import _get_global_client

            host = _get_global_client().http_config.host or host
        except Exception:  # noqa: BLE001 - no controller client in this process: keep the configured host
            log.warning("could not read Serve's http_options; checking the configured host %s", host)
        security.check_bind_security(
            host, api_key, allow_unauthenticated_network=self.cfg.allow_unauthenticated_network
        )
        _State.api_key = api_key
        _State.max_body_bytes = self.cfg.max_body_bytes
        self.members = members
        self.names = names
        self.resolved = resolved
        self._infos_current = False
        self.infos: list[MemberInfo] = []
        self.model_info: list[dict[str, Any]] = []
        self.drift: list[RollingDriftMonitor | None] = []
        self._infos_lock = asyncio.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.split_methods: Counter[str] = Counter()
        self.clipped_texts = 0
        self.member_calls = self.member_call_requests = 0
        self.m_requests = metrics.Counter(
            "raw_rm_requests", description="HTTP requests", tag_keys=("endpoint", "status")
        )
        self.m_latency = metrics.Histogram(
            "raw_rm_request_latency_ms",
            description="request latency",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("endpoint",),
        )
        # small requests (OpenRLHF sends one query each) from concurrent clients share one call per member
        self.batcher = None
        if self.cfg.ingress_max_concurrent_batches > 0:
            self.batcher = MicroBatcher(
                self._score_members,
                max_batch_size=self.cfg.max_batch_size,
                batch_wait_timeout_s=self.cfg.ingress_batch_wait_timeout_s,
                max_concurrent_batches=self.cfg.ingress_max_concurrent_batches,
                size_fn=_n_texts,
            )
        self.m_items = metrics.Histogram(
            "raw_rm_request_items", description="items per request", boundaries=BATCH_BUCKETS, tag_keys=("endpoint",)
        )

    # ------------------------------------------------------------------------------ endpoints
    @api.post("/get_reward")
    async def get_reward(self, request: Request) -> JSONResponse:
        return await self._handle("/get_reward", request, self._get_reward)

    @api.post("/score")
    async def score(self, request: Request) -> JSONResponse:
        return await self._handle("/score", request, self._score)

    @api.post("/compare")
    async def compare(self, request: Request) -> JSONResponse:
        return await self._handle("/compare", request, self._compare)

    @api.post("/rank")
    async def rank(self, request: Request) -> JSONResponse:
        return await self._handle("/rank", request, self._rank)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        self._count("/healthz", 200, 0.0)
        return JSONResponse({"status": "ok", "models": len(self.members)})

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        try:
            await self._ensure_infos()
        except MembersUnavailable as exc:
            self._count("/v1/models", 503, 0.0)
            return _json_error(503, "models", str(exc), {"Retry-After": "2"})
        self._count("/v1/models", 200, 0.0)
        return JSONResponse(
            {
                "object": "list",
                "reward_aggregate": self.cfg.reward,
                "normalize": self.cfg.normalize,
                "members_total": sum(m.heads for m in self.infos),
                "http_frontend": environment_frontend(),  # the front the replicas' Ray was started with
                "ingress_replicas": self.cfg.ingress_replicas,
                "data": self.model_info,
            }
        )

    @api.get("/stats")
    async def stats(self) -> JSONResponse:
        member_stats = await asyncio.gather(*(self._call(h, "stats") for h in self.members), return_exceptions=True)
        by_endpoint: dict[str, dict[str, int]] = {}
        for (endpoint, status), n in sorted(self.requests.items()):
            by_endpoint.setdefault(endpoint, {})[str(status)] = n
        drift = {}
        for name, monitor in zip(self.names, self.drift):
            drift[name] = {"reference": False} if monitor is None else {"reference": True, **_finite(monitor.stats())}
        self._count("/stats", 200, 0.0)
        return JSONResponse(
            {
                "requests": by_endpoint,
                "split_methods": dict(self.split_methods),
                "clipped_texts": self.clipped_texts,
                "ingress": {
                    "member_calls": self.member_calls,
                    "requests": self.member_call_requests,
                    "mean_requests_per_call": self.member_call_requests / self.member_calls
                    if self.member_calls
                    else 0.0,
                },
                "members": {
                    name: s if isinstance(s, dict) else {"error": type(s).__name__}
                    for name, s in zip(self.names, member_stats)
                },
                "drift": drift,
            }
        )

    # ---------------------------------------------------------------------------- handlers
    async def _get_reward(self, body: Any) -> dict[str, Any]:
        items = scoring.parse_get_reward(body, self.cfg)
        self.split_methods.update(items.split_methods)
        self.clipped_texts += items.n_clipped
        raw = await self._members_raw(items)
        agg = scoring.aggregate_scores(self._normalised(raw), self.cfg)
        return scoring.get_reward_response(agg, items)

    async def _score(self, body: Any) -> dict[str, Any]:
        items = scoring.parse_score(body, self.cfg)
        raw = await self._members_raw(items)
        members = self._normalised(raw)
        return scoring.score_response(scoring.aggregate_scores(members, self.cfg), members, raw, self.cfg)

    async def _compare(self, body: Any) -> dict[str, Any]:
        side_a, side_b = scoring.parse_compare(body, self.cfg)
        both = scoring.ScoreItems(side_a.prompts + side_b.prompts, side_a.responses + side_b.responses)
        raw = await self._members_raw(both)
        raw_a, raw_b = raw[: len(side_a)], raw[len(side_a) :]
        probs = scoring.pair_probabilities(raw_a, raw_b, self.infos)
        agg_a = scoring.aggregate_scores(self._normalised(raw_a), self.cfg)
        agg_b = scoring.aggregate_scores(self._normalised(raw_b), self.cfg)
        return scoring.compare_response(agg_a, agg_b, probs)

    async def _rank(self, body: Any) -> dict[str, Any]:
        items = scoring.parse_rank(body, self.cfg)
        raw = await self._members_raw(items)
        return scoring.rank_response(scoring.aggregate_scores(self._normalised(raw), self.cfg), self.cfg)

    # ------------------------------------------------------------------------------ plumbing
    async def _handle(self, endpoint: str, request: Request, fn: Any) -> JSONResponse:
        start = time.perf_counter()
        try:
            body = await self._read_json(request)
            response = JSONResponse(await fn(body))
        except RequestError as exc:
            response = JSONResponse(exc.to_json(), status_code=exc.status)
        except MembersUnavailable as exc:
            response = _json_error(503, "models", str(exc), {"Retry-After": "2"})
        except Exception:  # noqa: BLE001 - a server fault: log it, answer JSON, keep the replica alive
            log.exception("%s failed", endpoint)
            response = JSONResponse({"error": "internal error", "field": None}, status_code=500)
        self._count(endpoint, response.status_code, (time.perf_counter() - start) * 1000.0)
        return response

    async def _read_json(self, request: Request) -> Any:
        data = await request.body()
        if len(data) > self.cfg.max_body_bytes:
            raise RequestError(
                "body", f"too large: {len(data)} bytes > max_body_bytes {self.cfg.max_body_bytes}", status=413
            )
        if not data.strip():
            raise RequestError("body", "empty; expected a JSON object", status=400)
        try:
            return json.loads(data)
        except UnicodeDecodeError as exc:
            raise RequestError("body", f"not UTF-8 ({exc.reason} at byte {exc.start})", status=400) from None
        except json.JSONDecodeError as exc:
            raise RequestError(
                "body", f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", status=400
            ) from None
        except RecursionError:
            raise RequestError("body", "JSON nested too deeply", status=400) from None

    def _count(self, endpoint: str, status: int, latency_ms: float) -> None:
        self.requests[(endpoint, status)] += 1
        self.m_requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.m_latency.observe(latency_ms, tags={"endpoint": endpoint})

    async def _call(self, handle: DeploymentHandle, method: str, *args: Any) -> Any:
        """Call a member, retrying while its replica is dead (the handle routes to the replacement)."""
        for attempt in range(self.cfg.member_retries + 1):
            try:
                return await getattr(handle, method).remote(*args)
            except RETRYABLE as exc:
                if attempt == self.cfg.member_retries:
                    raise MembersUnavailable(
                        f"a member replica was unavailable {attempt + 1} times ({type(exc).__name__}); retry later"
                    ) from exc
                log.warning("member call %s failed (%s); retry %d", method, type(exc).__name__, attempt + 1)
                await asyncio.sleep(min(0.5 * 2**attempt, 4.0))
        raise AssertionError("unreachable: the loop returns or raises")

    async def _ensure_infos(self) -> None:
        if self._infos_current:
            return
        async with self._infos_lock:
            if self._infos_current:
                return
            infos = await asyncio.gather(*(self._call(h, "info") for h in self.members))
            self._infos_current = [i["resolved"] for i in infos] == self.resolved
            self.model_info = [
                {"id": name, **{k: v for k, v in i.items() if k != "reference"}} for name, i in zip(self.names, infos)
            ]
            for entry in self.model_info:
                entry["alias"] = _alias(entry["source"])
            self.drift = [_monitor(i.get("reference"), self.cfg.drift_window) for i in infos]
            self.infos = [
                MemberInfo(
                    name,
                    int(i["heads"]),
                    float(i["reward_mean"]),
                    float(i["reward_std"]),
                    float(i["temperature"]),
                    members_normalised=bool(i["members_normalised"]),
                )
                for name, i in zip(self.names, infos)
            ]

    async def _members_raw(self, items: scoring.ScoreItems) -> torch.Tensor:
        """(N, K) raw member rewards: every member deployment called concurrently, columns in member order."""
        await self._ensure_infos()
        n = len(items)
        self.m_items.observe(n, tags={"endpoint": "any"})
        if n == 0:
            return torch.zeros(0, sum(m.heads for m in self.infos), dtype=torch.float64)
        if self.batcher is not None and n <= self.cfg.max_batch_size:
            answers = await self.batcher.submit((items.prompts, items.responses))
        else:
            answers = await self._score_members([(items.prompts, items.responses)])
            answers = answers[0]
        blocks = [torch.tensor(a, dtype=torch.float64).reshape(n, info.heads) for a, info in zip(answers, self.infos)]
        for block, monitor in zip(blocks, self.drift):
            if monitor is not None:  # the reference holds the model's reward (the mean of its heads), raw
                monitor.update(block.mean(dim=1).numpy())
        return torch.cat(blocks, dim=1)

    async def _score_members(self, chunks: list[tuple[list[str], list[str]]]) -> list[list[list[list[float]]]]:
        """Every member called once for all chunks (concurrently); per chunk, per member, that member's rows."""
        prompts = [p for chunk_prompts, _ in chunks for p in chunk_prompts]
        responses = [r for _, chunk_responses in chunks for r in chunk_responses]
        answers = await asyncio.gather(*(self._call(h, "score", prompts, responses) for h in self.members))
        self.member_calls += 1
        self.member_call_requests += len(chunks)
        out, start = [], 0
        for _, chunk_responses in chunks:
            end = start + len(chunk_responses)
            out.append([rows[start:end] for rows in answers])
            start = end
        return out

    def _normalised(self, raw: torch.Tensor) -> torch.Tensor:
        return scoring.normalise_members(raw, self.infos, normalize=self.cfg.normalize)


# ------------------------------------------------------------------------------------------ builder
def pin_model_source(source: str, tracking_uri: str | None) -> str:
    """``models:/NAME@alias`` -> ``models:/NAME/VERSION`` the alias points at now; anything else unchanged.

    Deployments get the pinned URI, so a moved alias changes the deployment's arguments and a redeploy
    rolls the members over to the new version (see the module doc).
    """
    if not (source.startswith("models:/") and "@" in source):
        return source

    name, _, alias = registry.parse_model_uri(source)
    version = registry.show(name, tracking_uri=tracking_uri).aliases.get(alias)
    if version is None:
        raise ConfigError(f"models: {source}: registered model {name!r} has no alias {alias!r}")
    return f"models:/{name}/{version}"


def build_app(args: dict[str, Any] | ServeConfig) -> serve.Application:
    """The Serve application for a ServeConfig (or its ``args`` dict, as ``serve run`` / ``serve deploy`` pass).

    Raises:
        ConfigError: no models, or an alias that does not exist.
        raw_rm.serve.security.ServeSecurityError: a non-loopback ``host`` without a key or the explicit opt-out.
    """
    cfg = args if isinstance(args, ServeConfig) else scoring.serve_config_from_args(args)
    if not cfg.models:
        raise ConfigError("models: give at least one model directory or models:/NAME@alias URI")
    if cfg.http_frontend != "auto" and cfg.http_frontend != environment_frontend():
        log.warning(
            "http_frontend=%s, but this process's environment says %s: the front is fixed when Ray starts (raw-rm serve "
            "sets it for a local Ray; `serve run` / a cluster need %s in the environment of Ray's start)",
            cfg.http_frontend,
            environment_frontend(),
            HAPROXY_ENV_TEXT,
        )
    api_key = security.resolve_api_key(cfg)
    mode = security.check_bind_security(
        cfg.host, api_key, allow_unauthenticated_network=cfg.allow_unauthenticated_network
    )
    log.info(
        "serving %d model(s) on %s:%d, auth mode %s, reward = %s", len(cfg.models), cfg.host, cfg.port, mode, cfg.reward
    )
    cfg_dict = asdict(cfg)  # deployments rebuild it with config_from_dict(cfg_dict, root=ServeConfig)
    names, members, resolved = [], [], []
    for i, source in enumerate(cfg.models):
        pinned = pin_model_source(source, cfg.tracking_uri)
        if pinned != source:
            log.info("%s -> %s", source, pinned)
        name = f"member{i}"
        names.append(name)
        resolved.append(pinned)
        members.append(
            RewardMember.options(
                name=name,
                num_replicas=cfg.num_replicas,
                max_ongoing_requests=cfg.max_ongoing_requests,
                ray_actor_options={"num_cpus": cfg.member_num_cpus, "num_gpus": cfg.member_num_gpus},
            ).bind(pinned, cfg_dict, source)
        )
    return RewardIngress.options(
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
    ).bind(members, cfg_dict, api_key, names, resolved)
