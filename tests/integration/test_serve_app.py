"""The reward server on a real Ray Serve over HTTP on 127.0.0.1: endpoints, OpenRLHF client, bad input, load, failures.

The /rm application serves a tiny single model (stored training mean 0.5, std 2.0, temperature 1.5) and a
tiny 3-head shared-trunk model (mean 0, std 1, temperature 1): 4 members. Every expected value is computed
offline in this process with ``RewardModelInference`` on the same model directories.
"""

from __future__ import annotations

import asyncio
import math
import random

import aiohttp
import httpx
import numpy as np
import pytest
from serve_support import (  # noqa: F401 - fixtures
    SINGLE_TEMPERATURE,
    expected_raw,
    normalised,
    post_json,
    serve_http,
    served,
    wait_until,
)

pytestmark = pytest.mark.integration

HH_PROMPT = "\n\nHuman: How do I keep basil alive?\n\nAssistant:"


def _openrlhf_payload(prompts: list[str], responses: list[str], labels: list) -> dict:
    return {"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts, "labels": labels}


def _mean_std(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    members = normalised(raw)
    return members.mean(axis=1), members.std(axis=1)


# --------------------------------------------------------------------------------------- endpoints
def test_healthz_and_models(served) -> None:
    from raw_rm.inference import RewardModelInference

    with httpx.Client(timeout=60) as client:
        health = client.get(f"{served['main']}/healthz")
        models = client.get(f"{served['main']}/v1/models")
    assert health.status_code == 200 and health.json() == {"status": "ok", "models": 2}
    body = models.json()
    assert models.headers["content-type"] == "application/json"
    assert (body["reward_aggregate"], body["members_total"]) == ("mean", 4)
    assert [(m["id"], m["heads"], m["arch"], m["alias"]) for m in body["data"]] == [
        ("member0", 1, "concat", None),
        ("member1", 3, "multihead", None),
    ]
    assert [m["version"] for m in body["data"]] == [
        RewardModelInference(str(served["single"])).version,
        RewardModelInference(str(served["multi"])).version,
    ]
    assert (body["data"][0]["reward_mean"], body["data"][0]["reward_std"], body["data"][0]["temperature"]) == (
        0.5,
        2.0,
        1.5,
    )
    # what each member chose and why: 2 member replicas share the usable CPUs, none reserved (member_num_cpus=0)
    from raw_rm.cpu_threads import usable_cpus

    threads = max(1, usable_cpus().count // 2)
    for member in body["data"]:
        assert member["torch_threads"] == threads, member
        assert member["torch_threads_reason"].startswith(f"{threads} thread"), member
        assert "shared by 2 processes" in member["torch_threads_reason"], member
        assert (member["precision"], member["precision_reason"]) == ("fp32", "set explicitly"), member
        assert (member["max_len_tokens"], member["replicas"]) == (512, 1), member
        assert (
            member["max_len_reason"]
            == "default: the model does not record its training length (metadata.max_len_tokens not set)"
        )
    assert (body["http_frontend"], body["ingress_replicas"]) == ("proxy", 1)


@pytest.mark.parametrize("n", [1, 5])
def test_openrlhf_client_round_trip(served, n: int) -> None:
    prompts = [HH_PROMPT] * n
    responses = [f" Water it {i} times a week." for i in range(n)]
    labels = ["", 3, 2.5, None, {"answer": [1, "b"]}][:n]  # opaque dataset values of any JSON type
    mean, std = _mean_std(expected_raw(served, prompts, responses))

    async def call() -> tuple[int, str, dict]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
            async with session.post(
                f"{served['main']}/get_reward", json=_openrlhf_payload(prompts, responses, labels)
            ) as resp:
                return resp.status, resp.headers["Content-Type"], await resp.json()

    status, content_type, body = asyncio.run(call())
    assert (status, content_type) == (200, "application/json")
    assert set(body) == {"rewards", "scores", "extra_logs"}
    assert body["rewards"] == pytest.approx(mean.tolist(), abs=1e-4)
    assert body["scores"] == body["rewards"]
    logs = body["extra_logs"]
    assert set(logs) == {
        "reward_mean",
        "reward_std",
        "reward_min",
        "reward_lcb",
        "reward_mean_minus_lambda_var",
        "reward_truncated",
    }
    assert all(len(v) == n and all(isinstance(x, float) for x in v) for v in logs.values())
    assert logs["reward_std"] == pytest.approx(std.tolist(), abs=1e-4)
    assert logs["reward_lcb"] == pytest.approx((mean - std).tolist(), abs=1e-4)
    assert logs["reward_truncated"] == [0.0] * n


def test_get_reward_edge_cases_answer_200(served) -> None:
    with httpx.Client(timeout=60) as client:
        empty = client.post(f"{served['main']}/get_reward", json={"query": [], "prompts": [], "labels": []})
        only_query = client.post(f"{served['main']}/get_reward", json={"query": [HH_PROMPT + " fine"]})
        special = client.post(
            f"{served['main']}/get_reward",
            json={"query": ["[CLS]" + HH_PROMPT + " fine[SEP]"], "prompts": [HH_PROMPT], "labels": [""]},
        )
        surrogate = client.post(
            f"{served['main']}/get_reward",
            content=b'{"query": ["hi \\ud800 there"]}',
            headers={"Content-Type": "application/json"},
        )
        long_text = " ".join(f"w{i}" for i in range(2000))  # 11,889 characters > max_text_chars 5000: keep the end
        clipped = client.post(
            f"{served['main']}/get_reward", json={"query": [HH_PROMPT + long_text], "prompts": [HH_PROMPT]}
        )
    assert empty.status_code == 200
    assert empty.json() == {
        "rewards": [],
        "scores": [],
        "extra_logs": {
            k: []
            for k in (
                "reward_mean",
                "reward_std",
                "reward_min",
                "reward_lcb",
                "reward_mean_minus_lambda_var",
                "reward_truncated",
            )
        },
    }
    # no prompts: split as training splits HH dialogues, after the last Assistant tag, leading space dropped
    mean, _ = _mean_std(expected_raw(served, [HH_PROMPT], ["fine"]))
    assert only_query.status_code == 200 and only_query.json()["rewards"] == pytest.approx(mean.tolist(), abs=1e-4)
    mean, _ = _mean_std(expected_raw(served, ["[CLS]" + HH_PROMPT], [" fine[SEP]"]))
    assert special.status_code == 200 and special.json()["rewards"] == pytest.approx(mean.tolist(), abs=1e-4)
    mean, _ = _mean_std(expected_raw(served, [""], ["hi \ufffd there"]))  # unpaired surrogate -> U+FFFD
    assert surrogate.status_code == 200 and surrogate.json()["rewards"] == pytest.approx(mean.tolist(), abs=1e-4)
    mean, _ = _mean_std(expected_raw(served, [HH_PROMPT], [long_text[-5000:]]))
    assert clipped.status_code == 200
    assert clipped.json()["rewards"] == pytest.approx(mean.tolist(), abs=1e-4)
    assert clipped.json()["extra_logs"]["reward_truncated"] == [1.0]


def test_score_compare_rank(served) -> None:
    prompt = "\n\nHuman: Name a colour.\n\nAssistant:"
    answers = [" Blue.", " Red, like a tomato.", " I would rather not say."]
    raw = expected_raw(served, [prompt] * 3, answers)
    members = normalised(raw)
    with httpx.Client(timeout=60) as client:
        scored = client.post(
            f"{served['main']}/score", json={"items": [{"prompt": prompt, "response": a} for a in answers]}
        )
        compared = client.post(
            f"{served['main']}/compare",
            json={"pairs": [{"prompt": prompt, "response_a": answers[0], "response_b": answers[1]}]},
        )
        ranked = client.post(f"{served['main']}/rank", json={"prompt": prompt, "responses": answers})
    assert scored.status_code == 200
    first = scored.json()["results"][0]
    assert first["raw_members"] == pytest.approx(raw[0].tolist(), abs=1e-4)
    assert first["members"] == pytest.approx(members[0].tolist(), abs=1e-4)
    assert first["min"] == pytest.approx(float(members[0].min()), abs=1e-4)
    assert first["mean_minus_lambda_var"] == pytest.approx(float(members[0].mean() - members[0].var()), abs=1e-4)
    # P(a > b): each member's raw difference over its model's temperature, averaged, through the sigmoid
    scaled = (raw[0] - raw[1]) / np.array([SINGLE_TEMPERATURE, 1.0, 1.0, 1.0])
    pair = compared.json()["results"][0]
    assert pair["prob_a"] == pytest.approx(1 / (1 + math.exp(-scaled.mean())), abs=1e-4)
    assert pair["member_probs"] == pytest.approx((1 / (1 + np.exp(-scaled))).tolist(), abs=1e-4)
    assert pair["preferred"] == ("a" if scaled.mean() >= 0 else "b")
    assert pair["vote_split"] == pytest.approx(min((scaled > 0).sum(), (scaled < 0).sum()) / scaled.size)
    assert ranked.json()["order"] == sorted(range(3), key=lambda i: -members[i].mean())
    assert ranked.json()["rewards"] == pytest.approx(members.mean(axis=1).tolist(), abs=1e-4)


def test_stats_count_requests_cache_hits_batches_and_drift(served) -> None:
    item = {"items": [{"prompt": "stats prompt", "response": "a response seen twice"}]}
    with httpx.Client(timeout=60) as client:
        before = client.get(f"{served['main']}/stats").json()
        first = client.post(f"{served['main']}/score", json=item)
        second = client.post(f"{served['main']}/score", json=item)
        bad = client.post(f"{served['main']}/score", json={"items": []})
        after = client.get(f"{served['main']}/stats").json()
    assert (first.status_code, second.status_code, bad.status_code) == (200, 200, 422)
    assert first.json() == second.json()

    def count(stats: dict, status: str) -> int:
        return stats["requests"].get("/score", {}).get(status, 0)

    assert (count(after, "200") - count(before, "200"), count(after, "422") - count(before, "422")) == (2, 1)
    for name in ("member0", "member1"):
        b, a = before["members"][name]["cache"], after["members"][name]["cache"]
        assert (a["hits"] - b["hits"], a["misses"] - b["misses"]) == (1, 1)
        assert 0.0 < a["hit_rate"] <= 1.0
        assert after["members"][name]["texts"] - before["members"][name]["texts"] == 2
    drift = after["drift"]["member0"]
    assert drift["reference"] is True and drift["n"] >= 2
    assert drift["psi"] >= 0.0 and 0.0 <= drift["ks"] <= 1.0


# ---------------------------------------------------------------------------------------- bad input
BAD_REQUESTS = [
    # (path, body: bytes are sent raw, anything else as JSON, expected status, field named)
    ("/get_reward", b"{bad", 400, "body"),
    ("/get_reward", b"", 400, "body"),
    ("/get_reward", b"\xff\xfe{}", 400, "body"),
    ("/get_reward", b"[" * 50_000 + b"]" * 50_000, 400, "body"),
    ("/get_reward", b" " * 250_000, 413, "body"),
    ("/get_reward", [1, 2], 422, "body"),
    ("/get_reward", "text", 422, "body"),
    ("/get_reward", {}, 422, "query"),
    ("/get_reward", {"query": "a"}, 422, "query"),
    ("/get_reward", {"query": [1]}, 422, "query[0]"),
    ("/get_reward", {"query": ["a", None]}, 422, "query[1]"),
    ("/get_reward", b'{"query": [NaN]}', 422, "query[0]"),
    ("/get_reward", {"query": ["a"], "prompts": ["a", "b"]}, 422, "prompts"),
    ("/get_reward", {"query": ["a"], "prompts": "a"}, 422, "prompts"),
    ("/get_reward", {"query": ["a"], "prompts": [5]}, 422, "prompts[0]"),
    ("/get_reward", {"query": ["a"], "labels": [1, 2]}, 422, "labels"),
    ("/get_reward", {"query": ["a"], "labels": "x"}, 422, "labels"),
    ("/get_reward", {"query": ["a"] * 65}, 413, "query"),
    ("/score", {"items": "x"}, 422, "items"),
    ("/score", {"items": []}, 422, "items"),
    ("/score", {"itemz": [{"response": "r"}]}, 422, "itemz"),
    ("/score", {"items": [1]}, 422, "items[0]"),
    ("/score", {"items": [{"prompt": "p"}]}, 422, "items[0].response"),
    ("/score", {"items": [{"response": ""}]}, 422, "items[0].response"),
    ("/score", {"items": [{"response": 3}]}, 422, "items[0].response"),
    ("/score", {"items": [{"prompt": ["p"], "response": "r"}]}, 422, "items[0].prompt"),
    ("/score", {"items": [{"response": "x" * 5001}]}, 413, "items[0].response"),
    ("/score", {"items": [{"response": "r", "extra": 1}]}, 422, "items[0].extra"),
    ("/score", {"items": [{"response": "r"}] * 65}, 413, "items"),
    ("/score", b'{"items": [{"response": "lone \\ud800 surrogate"}]}', 422, "items[0].response"),
    ("/compare", {"pairs": [{"response_a": "a"}]}, 422, "pairs[0].response_b"),
    ("/compare", {"pairs": [{"response_a": None, "response_b": "b"}]}, 422, "pairs[0].response_a"),
    ("/compare", {"pairs": {}}, 422, "pairs"),
    ("/rank", {"responses": ["a"]}, 422, "prompt"),
    ("/rank", {"prompt": "p", "responses": []}, 422, "responses"),
    ("/rank", {"prompt": "p", "responses": ["a", 2]}, 422, "responses[1]"),
    ("/rank", {"prompt": "p", "responses": "a"}, 422, "responses"),
    ("/nope", {}, 404, "path"),
]


def test_malformed_requests_get_4xx_naming_the_field_then_valid_request_succeeds(served) -> None:
    assert len(BAD_REQUESTS) >= 30
    failures = []
    with httpx.Client(timeout=60) as client:
        for path, body, status, field in BAD_REQUESTS:
            if isinstance(body, bytes):
                resp = client.post(
                    f"{served['main']}{path}", content=body, headers={"Content-Type": "application/json"}
                )
            else:
                resp = client.post(f"{served['main']}{path}", json=body)
            got = resp.json() if resp.headers.get("content-type") == "application/json" else resp.text
            ok = (
                resp.status_code == status
                and isinstance(got, dict)
                and got.get("field") == field
                and got.get("error", "").startswith(f"{field}: ")
            )
            if not ok:
                failures.append((path, repr(body)[:60], resp.status_code, got))
        wrong_method = client.get(f"{served['main']}/get_reward")
        valid = client.post(
            f"{served['main']}/get_reward", json={"query": [HH_PROMPT + " ok"], "prompts": [HH_PROMPT], "labels": [""]}
        )
    assert failures == []
    assert (wrong_method.status_code, wrong_method.json()["field"]) == (405, "path")
    assert valid.status_code == 200 and len(valid.json()["rewards"]) == 1


# ------------------------------------------------------------------------------------ load, failures
WORDS = "apple river stone cloud quick slow green seven laugh paper window bridge mountain candle silver garden".split()


def _load_texts(tag: str, n: int) -> tuple[list[str], list[str]]:
    """n unique (prompt, response) rows of HH-shaped text with random words (seeded by ``tag``)."""
    rng = random.Random(tag)
    prompts = [f"\n\nHuman: question {i % 40} ({tag})\n\nAssistant:" for i in range(n)]
    responses = [f" {tag}-{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for i in range(n)]
    return prompts, responses


def _fingerprints(raw: np.ndarray) -> np.ndarray:
    """(N, 3) mean, std and min over the normalised members: what /get_reward returns for each query."""
    members = normalised(raw)
    return np.stack([members.mean(axis=1), members.std(axis=1), members.min(axis=1)], axis=1)


async def _run_clients(
    url: str, payloads: list[dict], *, clients: int, retries: int, on_done=None
) -> list[tuple[int, dict]]:
    results: list[tuple[int, dict] | None] = [None] * len(payloads)
    next_index = iter(range(len(payloads)))
    done = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for i in next_index:
            results[i] = await post_json(session, url, payloads[i], retries=retries, delay_s=1.0)
            done += 1
            if on_done is not None:
                await on_done(done)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=180)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return results  # type: ignore[return-value]


def _check_matched(results: list[tuple[int, dict]], expected: np.ndarray) -> None:
    """Every request answered 200 with one (reward, std, min), equal to those of its own text and no other's."""
    # a misrouted or duplicated answer is caught only if no two texts share (mean, std, min) to within 2e-4
    dist = np.abs(expected[:, None, :] - expected[None, :, :]).max(axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 2e-4, "two texts have nearly the same rewards: the check could not tell them apart"
    statuses = [status for status, _ in results]
    assert statuses.count(200) == len(results), f"non-200 answers: {sorted(set(map(str, statuses)))}"
    assert all(len(body["rewards"]) == 1 for _, body in results)
    got = np.array(
        [[b["rewards"][0], b["extra_logs"]["reward_std"][0], b["extra_logs"]["reward_min"][0]] for _, b in results]
    )
    mismatched = np.flatnonzero(np.abs(got - expected).max(axis=1) > 1e-4)
    assert mismatched.tolist() == []


def test_load_2000_requests_from_32_clients_each_answer_matches_its_request(served) -> None:
    prompts, responses = _load_texts("load", 2000)
    expected = _fingerprints(expected_raw(served, prompts, responses))
    payloads = [_openrlhf_payload([p], [r], [""]) for p, r in zip(prompts, responses)]
    results = asyncio.run(_run_clients(f"{served['main']}/get_reward", payloads, clients=32, retries=0))
    _check_matched(results, expected)
    stats = httpx.get(f"{served['main']}/stats", timeout=60).json()
    assert max(int(size) for size in stats["members"]["member0"]["batch_sizes"]) > 1, "requests were never batched"
    assert stats["ingress"]["requests"] > stats["ingress"]["member_calls"], (
        f"the ingress never batched requests: {stats['ingress']}"
    )


def test_member_replica_killed_during_load_comes_back_and_retrying_clients_get_answers(served) -> None:
    import ray
    from ray import serve

    def member0_replicas() -> list[str]:
        actors = ray.util.list_named_actors(all_namespaces=True)
        return [
            a["name"]
            for a in actors
            if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::rm#member0#")
        ]

    (victim,) = member0_replicas()
    prompts, responses = _load_texts("kill", 300)
    expected = _fingerprints(expected_raw(served, prompts, responses))
    payloads = [_openrlhf_payload([p], [r], [""]) for p, r in zip(prompts, responses)]
    killed = []

    async def kill_after_some(done: int) -> None:
        if done >= 40 and not killed:
            killed.append(victim)
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

    # like OpenRLHF's client, retry failures, here long enough to outlast the replica's replacement
    results = asyncio.run(
        _run_clients(f"{served['main']}/get_reward", payloads, clients=16, retries=30, on_done=kill_after_some)
    )
    assert killed == [victim]
    _check_matched(results, expected)

    def replaced() -> bool:
        names = member0_replicas()
        status = serve.status().applications["rm"].deployments["member0"]
        return len(names) == 1 and names[0] != victim and status.replica_states.get("RUNNING", 0) == 1

    wait_until(replaced, timeout_s=120)
    after = httpx.post(
        f"{served['main']}/score", json={"items": [{"prompt": "p", "response": "after the kill"}]}, timeout=60
    )
    assert after.status_code == 200
