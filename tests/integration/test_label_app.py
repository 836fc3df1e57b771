"""`raw-rm label` as a real server: security, input validation, concurrent submissions, a crash mid-session, and
the export that `raw-rm train` accepts; human validation of a model next to the annotators' agreement."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from label_support import LabelServer, bearer, correct_index, raw_rm, train_tiny, write_pool

from raw_rm.label.store import LabelStore

pytestmark = pytest.mark.integration

KEY = "admin-key-for-tests-0123456789"


def test_non_loopback_bind_without_key_refuses_to_start(tmp_path: Path) -> None:
    proc = raw_rm(
        "label",
        "--db",
        f"sqlite:///{tmp_path}/l.db",
        "--pool",
        str(write_pool(tmp_path)),
        "--host",
        "0.0.0.0",
        cwd=tmp_path,
        env={"RAW_RM_API_KEY": ""},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        "raw-rm label: error: host '0.0.0.0' is not a loopback address and no API key is configured: set the "
        "environment variable RAW_RM_API_KEY (or api_key_env / api_key_file in the serve config), bind 127.0.0.1, "
        "or, on a trusted private network only, set allow_unauthenticated_network: true"
    )


@pytest.fixture()
def keyed(tmp_path: Path):
    server = LabelServer(
        tmp_path / "l.db",
        "--pool",
        str(write_pool(tmp_path)),
        "--annotator",
        "alice",
        "--aspects",
        "helpfulness",
        cwd=tmp_path,
        env={"RAW_RM_API_KEY": KEY},
    )
    yield server
    server.stop()


def test_admin_key_and_annotator_tokens(keyed: LabelServer) -> None:
    token = keyed.links()["alice"]
    url = f"{keyed.base}/api/admin/summary"
    missing = httpx.get(url)
    assert missing.status_code == 401 and missing.json()["field"] == "authorization"
    assert missing.json()["error"].startswith("authorization: missing admin key")
    assert httpx.get(url, headers=bearer("nope")).json()["error"].startswith("authorization: wrong admin key")
    as_annotator = httpx.get(url, headers=bearer(token))
    assert as_annotator.status_code == 403
    assert as_annotator.json() == {
        "error": "authorization: an annotator token can only label; admin routes need the admin key",
        "field": "authorization",
    }
    for path in ("/api/admin/export", "/api/admin/plot/agreement.png"):
        assert httpx.get(keyed.base + path, headers=bearer(token)).status_code == 403
    assert (
        httpx.post(f"{keyed.base}/api/admin/annotators", json={"name": "mallory"}, headers=bearer(token)).status_code
        == 403
    )
    assert httpx.get(url, headers={"X-API-Key": KEY}).status_code == 200
    # Annotator routes take annotator tokens only; the admin key is not one.
    assert httpx.get(f"{keyed.base}/api/next", headers=bearer(KEY)).status_code == 401
    assert httpx.get(f"{keyed.base}/api/next").json()["error"].startswith("authorization: missing annotator token")
    # Added through the admin API, the new annotator can label at once.
    made = httpx.post(f"{keyed.base}/api/admin/annotators", json={"name": "bob"}, headers=bearer(KEY)).json()
    assert httpx.get(f"{keyed.base}/api/next", headers=bearer(made["token"])).json()["item"]["id"] == 1
    assert KEY not in keyed.log.read_text()


def test_invalid_input_is_a_4xx_naming_the_field(keyed: LabelServer) -> None:
    auth = bearer(keyed.links()["alice"])
    item = httpx.get(f"{keyed.base}/api/next", headers=auth).json()["item"]

    def post(body: object, **kwargs) -> httpx.Response:
        return httpx.post(
            f"{keyed.base}/api/judgements", headers=auth, **({"json": body} if body is not None else kwargs)
        )

    cases = [
        (post(None, content=b"{not json"), 400, "body"),
        (post([1, 2]), 422, "body"),
        (post({"item_id": item["id"], "decision": "ranked", "ranks": [0, 5]}), 422, "ranks[1]"),
        (post({"item_id": item["id"], "decision": "ranked", "ranks": [0, 1], "strength": "huge"}), 422, "strength"),
        (post({"item_id": item["id"], "decision": "tie", "aspects": {"humour": 0}}), 422, "aspects.humour"),
        (post({"item_id": 999, "decision": "tie"}), 404, "item_id"),
        (post({"item_id": 2, "decision": "tie"}), 409, "item_id"),  # not shown to alice
        (post(None, content=b"{" + b" " * 70000 + b"}"), 413, "body"),
        (httpx.get(f"{keyed.base}/api/admin/export?as=csv", headers=bearer(KEY)), 422, "as"),
        (
            httpx.get(f"{keyed.base}/api/admin/export?min_judgements=two", headers=bearer(KEY)),
            422,
            "query.min_judgements",
        ),
        (httpx.get(f"{keyed.base}/api/admin/export?aspect=humour", headers=bearer(KEY)), 422, "aspect"),
        (httpx.get(f"{keyed.base}/api/admin/plot/pie.png", headers=bearer(KEY)), 404, "name"),
        (httpx.get(f"{keyed.base}/api/nothing"), 404, "path"),
    ]
    for response, status, field in cases:
        assert (response.status_code, response.json()["field"]) == (status, field), response.text
    assert post({"item_id": item["id"], "decision": "ranked", "ranks": [0, 1]}).status_code == 200
    again = post({"item_id": item["id"], "decision": "tie"})
    assert (
        again.status_code == 409 and again.json()["error"] == f"item_id: item {item['id']} is answered already by alice"
    )


def test_pages_and_scripts_are_served_locally(keyed: LabelServer) -> None:
    page = httpx.get(f"{keyed.base}/annotate")
    assert page.status_code == 200 and '<script src="/static/annotate.js">' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for name in ("annotate.js", "admin.js", "label.css"):
        assert httpx.get(f"{keyed.base}/static/{name}").status_code == 200
    for path in ("/annotate", "/admin", "/static/annotate.js", "/static/admin.js", "/static/label.css"):
        assert (
            "http://" not in httpx.get(keyed.base + path).text and "https://" not in httpx.get(keyed.base + path).text
        )
    assert httpx.get(f"{keyed.base}/static/../store.py").status_code == 404


def test_concurrent_submissions_over_http_lose_nothing(tmp_path: Path) -> None:
    names = [f"ann{i}" for i in range(6)]
    args = [a for n in names for a in ("--annotator", n)]
    server = LabelServer(tmp_path / "c.db", "--pool", str(write_pool(tmp_path)), "--per-item", "6", *args, cwd=tmp_path)
    tokens = server.links()
    barrier = threading.Barrier(len(names))
    statuses: list[int] = []

    def work(name: str) -> None:
        with httpx.Client(base_url=server.base, headers=bearer(tokens[name]), timeout=60) as client:
            while True:
                item = client.get("/api/next").json()["item"]
                barrier.wait(timeout=60)  # everyone submits at the same moment
                if item is None:
                    return
                decision = {"item_id": item["id"], "decision": "tie"}
                statuses.append(client.post("/api/judgements", json=decision).status_code)

    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        server.stop()
    assert statuses == [200] * (7 * len(names))
    judged = LabelStore(str(tmp_path / "c.db")).judgements()
    assert sorted(judged) == list(range(1, 8)) and {len(rows) for rows in judged.values()} == {6}


def test_a_crash_mid_session_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    server = LabelServer(
        db, "--pool", str(write_pool(tmp_path)), "--annotator", "alice", "--annotator", "bob", cwd=tmp_path
    )
    tokens = server.links()
    with httpx.Client(base_url=server.base, headers=bearer(tokens["alice"])) as alice:
        for _ in range(2):
            item = alice.get("/api/next").json()["item"]
            assert alice.post("/api/judgements", json={"item_id": item["id"], "decision": "skip"}).status_code == 200
        on_screen = alice.get("/api/next").json()["item"]
    server.kill()
    restarted = LabelServer(db, cwd=tmp_path)  # no --pool: the database has the items
    try:
        with httpx.Client(base_url=restarted.base, headers=bearer(tokens["alice"])) as alice:
            again = alice.get("/api/next").json()
            assert again["item"] == on_screen and again["progress"] == {"answered": 2, "remaining": 5}
            assert (
                alice.post("/api/judgements", json={"item_id": on_screen["id"], "decision": "tie"}).status_code == 200
            )
    finally:
        restarted.stop()
    rows = LabelStore(str(db)).judgements()
    assert [(r.annotator, r.judgement.decision) for item in sorted(rows) for r in rows[item]] == [
        ("alice", "skip"),
        ("alice", "skip"),
        ("alice", "tie"),
    ]


def _label_everything(server: LabelServer, tokens: dict[str, str]) -> None:
    """alice answers every pair correctly ('clear'), bob gets the arithmetic item 5 wrong; both rank the k-wise
    item 7 > 9 > 12, bob says 9 and 12 tie."""
    for name, token in tokens.items():
        with httpx.Client(base_url=server.base, headers=bearer(token)) as client:
            while (item := client.get("/api/next").json()["item"]) is not None:
                texts = {r["index"]: r["text"] for r in item["responses"]}
                ordered = [texts[i] for i in range(len(texts))]
                if len(ordered) == 3:
                    body = {"decision": "ranked", "ranks": [0, 1, 2] if name == "alice" else [0, 1, 1]}
                else:
                    right = correct_index(item["prompt"], ordered)
                    if name == "bob" and item["prompt"] == "What is 5 + 5?":
                        right = 1 - right
                    body = {"decision": "ranked", "ranks": [0, 1] if right == 0 else [1, 0], "strength": "clear"}
                assert client.post("/api/judgements", json={"item_id": item["id"], **body}).status_code == 200


def _register(model_dir: Path, mlflow_uri: str, tmp_path: Path) -> str:
    """Log ``model_dir`` in a tracked run and register it; returns its ``models:/NAME@candidate`` URI."""
    from raw_rm.config import Config, apply_overrides
    from raw_rm.tracking import registry
    from raw_rm.tracking.runs import tracking

    cfg = apply_overrides(
        Config(),
        {
            "mlflow.tracking_uri": mlflow_uri,
            "mlflow.registered_model": "label-test",
            "train.output_dir": str(tmp_path / "tracked"),
        },
    )
    with tracking(cfg, run_name="label-test") as run:
        run.log_model(model_dir)
    registry.register_version(run.run_id, "model", "label-test", tracking_uri=mlflow_uri)
    return "models:/label-test@candidate"


def test_export_trains_and_the_report_validates_a_model(tmp_path: Path, mlflow_uri: str) -> None:
    db = tmp_path / "t.db"
    server = LabelServer(
        db, "--pool", str(write_pool(tmp_path)), "--annotator", "alice", "--annotator", "bob", cwd=tmp_path
    )
    try:
        _label_everything(server, server.links())
    finally:
        server.stop()
    out = tmp_path / "labels.jsonl"
    proc = raw_rm("label", "export", "--db", f"sqlite:///{db}", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # 6 pairs + the k-wise item's comparisons 7>9 and 7>12 (both agree); 9 vs 12 is 1 vs 1 (alice 9, bob tie):
    # not written. Item 6 ("5 + 5") is 1 vs 1 as well.
    assert proc.stderr.strip() == "exported 7 pairs -> " + str(out) + "; comparisons not written: {'no_majority': 2}"
    assert sorted(r["weight"] for r in rows) == [1.0] * 7
    assert all(r["chosen"].startswith(("It is", "7")) for r in rows)
    run = tmp_path / "run"
    trained = train_tiny(out, run, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"model: {run / 'model'}" in trained.stdout
    # The trained model, registered in MLflow, is the one to validate: the app scores every item through its models:/
    # URI, and the report puts its agreement next to the human ceiling.
    uri = _register(run / "model", mlflow_uri, tmp_path)
    validated = LabelServer(db, "--model", uri, "--tracking-uri", mlflow_uri, cwd=tmp_path)
    validated.stop()
    report = raw_rm(
        "label", "report", "--db", f"sqlite:///{db}", "--out", str(tmp_path / "rep"), "--n-boot", "200", cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())
    # Agreement by hand: the six pairs agree except item 6 ("5 + 5"); the k-wise item: (7,9) and (7,12) agree,
    # (9,12) alice + / bob tie. 9 comparisons with two annotators, 7 agree.
    assert summary["agreement"]["raw_agreement"] == pytest.approx(7 / 9)
    assert f"reward model {uri}: agrees with the majority on " in report.stdout
    from raw_rm.inference import RewardModelInference

    rm = RewardModelInference(run / "model")
    store = LabelStore(str(db))
    agree = n = 0
    for item in store.items():
        rewards = rm.batch_predict([item.prompt] * len(item.responses), item.responses)
        assert item.model_rewards == pytest.approx(rewards.tolist(), abs=1e-5)
        rows_of = {r.annotator: r.judgement.ranks for r in store.judgements()[item.id]}
        for i in range(len(item.responses)):
            for j in range(i + 1, len(item.responses)):
                votes = [(r[i] < r[j]) - (r[i] > r[j]) for r in rows_of.values()]
                if votes[0] == votes[1] != 0:  # two annotators: a strict, non-tie majority needs both
                    n += 1
                    agree += (rewards[i] > rewards[j]) == (votes[0] > 0)
    assert summary["agreement"]["model"]["majority"] == {"agree": agree, "n": n, "share": agree / n}
    # Ceiling: each annotator's non-tie value against the other's non-tie value: the six pairs give 12 (10 agree,
    # item 6 twice not), (7,9) and (7,12) give 2 each (all agree), (9,12) none (bob's tie). 14 / 16.
    assert summary["agreement"]["ceiling"] == {"agree": 14, "n": 16, "share": 0.875}
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {
        "report.json",
        "report.html",
        "progress.png",
        "agreement.png",
        "kappa.png",
    }
