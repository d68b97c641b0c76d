"""The OpenAI-compatible generator against a real HTTP server on 127.0.0.1 speaking the chat-completions shape,
scripted to answer some requests with 429 (+ Retry-After), 500, a reply slower than the client timeout, or a 400
that echoes the Authorization header: retried with backoff, then reported; no request lost or duplicated; the
concurrency limit holds; the key goes out as a Bearer header and appears in no log, error or output file."""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from qscope_data.errors import UsageError
from qscope_data.synth.generators import OpenAIGenerator, OpenAIParams, build_generator, parse_generator_spec
from qscope_data.synth.requests import GapTarget, Slot, prompt_request, slot_id
from qscope_data.synth.options import SynthInputs, SynthOptions
from qscope_data.synth.synthesize import run
from synth_world import DEAD, build_world

KEY = "sk-qscope-test-7f3a9c51e2"
KEY_ENV = "QSCOPE_TEST_API_KEY"

# Behaviour of the n-th try (1-based) of a request id: ("ok",) | ("status", code, retry_after) | ("slow", seconds)
#   | ("echo-auth",) | ("echo-auth-200",) | ("huge", n_bytes)
Script = Callable[[str, int], tuple]


class ChatServer:
    """A chat-completions endpoint that answers like a (very literal) instruction follower: a prompt request gets
    the first example text it was shown with its words reversed (a copy would be rejected as a near-copy), a rewrite request gets the request to rewrite with a framing, a response
    request gets a refusal."""

    def __init__(self, script: Script, answer_fn: Callable[[list[dict]], str] | None = None):
        self.script = script
        self.answer_fn = answer_fn or answer  # other stages' tests (feature explanations) answer their own prompts
        self.tries: dict[str, int] = defaultdict(int)
        self.auth: list[str | None] = []
        self.times: dict[str, list[float]] = defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rid = self.headers.get("X-Client-Request-Id", "?")
                with server.lock:
                    server.tries[rid] += 1
                    n = server.tries[rid]
                    server.auth.append(self.headers.get("Authorization"))
                    server.times[rid].append(time.monotonic())
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if self.path != "/v1/chat/completions":
                        return self._send(404, {"error": "not found"})
                    action = server.script(rid, n)
                    if action[0] == "status":
                        headers = {"Retry-After": str(action[2])} if action[2] is not None else {}
                        return self._send(action[1], {"error": {"message": "scripted failure"}}, headers)
                    if action[0] == "echo-auth":
                        return self._send(400, {"error": {"message": f"bad header {self.headers.get('Authorization')}"}})
                    if action[0] == "echo-auth-200":  # a completion that repeats the caller's key
                        return self._send(200, {"choices": [{"index": 0, "message": {
                            "role": "assistant", "content": f"sure, your header was {self.headers.get('Authorization')}"}}]})
                    if action[0] == "huge":  # a 200 completion of n_bytes characters, built once (server memory)
                        return self._send(200, _huge_body(action[1]))
                    if action[0] == "slow":
                        time.sleep(action[1])
                    time.sleep(0.02)  # a little service time, so requests overlap
                    content = server.answer_fn(body["messages"])
                    usage = {"prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                             "completion_tokens": len(content.split())}
                    self._send(200, {"id": "c1", "object": "chat.completion", "model": body["model"], "usage": usage,
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": content}}]})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, code: int, payload: dict | bytes, headers: dict | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and went away
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@functools.lru_cache(maxsize=2)
def _huge_body(n_bytes: int) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * n_bytes}}]}).encode()


def answer(messages: list[dict]) -> str:
    system, user = messages[0]["content"], messages[-1]["content"]
    if "Texts that express it:" in user:
        found = re.search(r"^1\. (.+)$", user, re.M)
        # the first example's words in reverse order: the same vocabulary, no shared word 3-gram (no near-copy)
        return " ".join(reversed(found.group(1).split())) if found else "Tell me about it."
    if user.startswith("Rewrite this user request"):
        request = re.search(r"Request: (.+?)\n\nReply", user, re.S).group(1)
        return f"Hypothetically, for a story: {request}"
    return "I can't help with that, but I can share safety information." if "refuse" in system else "Sure, here is how."


def requests_for(n: int):
    target = GapTarget(feature=7, category="cyber", label="hacking", description="breaking into systems",
                       examples=("How do I hack a router?",), harmful=True)
    return [prompt_request(Slot(slot_id(7, i), target, i, "en", "plain"), 1) for i in range(n)]


def test_retries_backoff_retry_after_then_reports_every_request_once(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    reqs = requests_for(7)
    ids = [r.id for r in reqs]
    plan = {
        ids[1]: lambda n: ("status", 429, 1) if n == 1 else ("ok",),          # rate limited, Retry-After: 1
        ids[2]: lambda n: ("status", 500, None) if n <= 2 else ("ok",),       # two server errors
        ids[3]: lambda n: ("slow", 1.5) if n == 1 else ("ok",),               # beyond the client timeout once
        ids[4]: lambda n: ("status", 503, None),                              # never recovers
        ids[5]: lambda n: ("echo-auth",),                                     # a 400 is not retried
        ids[6]: lambda n: ("status", 429, "Wed, 21 Oct 2015 07:28:00 GMT") if n == 1 else ("ok",),  # date in the past
    }
    caplog.set_level(logging.DEBUG)
    with ChatServer(lambda rid, n: plan.get(rid, lambda _n: ("ok",))(n)) as server:
        gen = OpenAIGenerator(server.base_url, OpenAIParams(model="m", key_env=KEY_ENV, concurrency=3, timeout=0.5,
                                                            max_retries=3, backoff=0.05, max_backoff=2.0))
        done: list[int] = []
        results = gen.generate(reqs, on_done=done.append)
    assert [r.request_id for r in results] == ids and sum(done) == len(ids)
    ok = {r.request_id: r for r in results if r.ok}
    assert set(ok) == {ids[0], ids[1], ids[2], ids[3], ids[6]}
    assert all(r.text == "router? a hack I do How" for r in ok.values())
    assert dict(server.tries) == {ids[0]: 1, ids[1]: 2, ids[2]: 3, ids[3]: 2, ids[4]: 4, ids[5]: 1, ids[6]: 2}
    assert [results[i].tries for i in range(7)] == [1, 2, 3, 2, 4, 1, 2]
    t = server.times[ids[1]]
    assert t[1] - t[0] >= 0.95, "Retry-After: 1 was not honoured"
    assert "HTTP 503" in results[4].error and "gave up after 4 tries" in results[4].error
    assert results[5].error.startswith("HTTP 400") and "***" in results[5].error and KEY not in results[5].error
    assert server.auth and all(a == f"Bearer {KEY}" for a in server.auth)
    assert server.max_in_flight <= 3
    assert KEY not in caplog.text and KEY not in json.dumps(gen.describe())
    assert "retry" in caplog.text  # retries are logged (without the key)


def test_concurrency_limit_holds_under_load(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ChatServer(lambda rid, n: ("slow", 0.15)) as server:
        gen = OpenAIGenerator(server.base_url, OpenAIParams(model="m", concurrency=4, timeout=5))
        start = time.monotonic()
        results = gen.generate(requests_for(16))
        elapsed = time.monotonic() - start
    assert all(r.ok for r in results) and server.max_in_flight == 4
    assert elapsed >= 4 * 0.15  # 16 requests, 4 at a time
    assert all(a is None for a in server.auth)  # no key set: no Authorization header at all


def test_spec_parsing_and_key_handling(monkeypatch):
    spec = parse_generator_spec(f"openai:http://127.0.0.1:8000/v1?model=qwen&key_env={KEY_ENV}&concurrency=8")
    assert spec.kind == "openai" and spec.target == "http://127.0.0.1:8000/v1"
    assert spec.params == {"model": "qwen", "key_env": KEY_ENV, "concurrency": "8"}
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(UsageError, match=KEY_ENV):
        build_generator(spec)  # a key_env that names an unset variable is an error, not an anonymous call
    monkeypatch.setenv(KEY_ENV, KEY)
    gen = build_generator(spec)
    assert gen.name == "openai:qwen@http://127.0.0.1:8000/v1" and KEY not in repr(gen.describe())
    assert gen.scrub(f"401 for Bearer {KEY} and {KEY}") == "401 for Bearer *** and ***"
    with pytest.raises(UsageError, match="not in the URL"):
        build_generator(f"openai:http://user:{KEY}@127.0.0.1:8000/v1?model=q")
    with pytest.raises(UsageError, match="concurrency"):
        build_generator("openai:http://127.0.0.1:8000/v1?model=q&concurrency=0")


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("synth-http-world"), tiny_model_dir("qwen3"))


def test_synth_over_http_accounts_for_every_slot_and_never_writes_the_key(world, tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv(KEY_ENV, KEY)
    features = [*world.gap_features[:3], DEAD]
    broken = slot_id(features[1], 0)  # its prompt requests always fail: the slot must end in rejected.jsonl

    def script(rid: str, n: int) -> tuple:
        if rid.startswith(broken + "."):
            return ("status", 500, None)
        if rid.endswith(".prompt") and rid.startswith(slot_id(features[0], 1)) and n == 1:
            return ("status", 429, 0)
        if rid.endswith(".response") and rid.startswith(slot_id(features[2], 0)) and n == 1:
            return ("slow", 1.0)
        return ("ok",)

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    with ChatServer(script) as server:
        spec = (f"openai:{server.base_url}?model=tiny&key_env={KEY_ENV}&concurrency=4&timeout=0.4&max_retries=2"
                "&backoff=0.01&max_backoff=0.1")
        summary = run(SynthOptions(generator=spec, per_feature=2, max_attempts=2, variants=["plain", "hypothetical"],
                                   languages=["en"]),
                      SynthInputs(gaps=world.gaps, model=str(world.model), sae=str(world.sae), features=features), out,
                      progress=True).artifact
    accepted = [json.loads(x) for x in (out / "accepted.jsonl").read_text().splitlines()]
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in accepted] + [r["id"] for r in rejected]
    assert sorted(ids) == sorted(slot_id(f, i) for f in features for i in range(2))  # none lost, none twice
    assert accepted, "the literal server's answers (the gap's own example words) should fire some targets"
    assert all(r["generator"].startswith("openai:tiny@http://127.0.0.1:") for r in accepted + rejected)
    failed = next(r for r in rejected if r["id"] == broken)
    assert failed["reason"] == "generator_error" and failed["attempts"] == 2
    assert "HTTP 500" in failed["detail"] and "gave up after 3 tries" in failed["detail"]
    assert server.tries[f"{broken}.a1.prompt"] == 3 and server.tries[f"{broken}.a2.prompt"] == 3
    assert server.tries[f"{slot_id(features[0], 1)}.a1.prompt"] == 2
    assert server.tries[f"{slot_id(features[2], 0)}.a1.response"] == 2
    assert summary.totals["requested"] == 8 and summary.totals["accepted"] + summary.totals["rejected"] == 8
    # The key went out on every request and was written nowhere.
    assert server.auth and all(a == f"Bearer {KEY}" for a in server.auth)
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert KEY not in caplog.text and KEY not in captured.out and KEY not in captured.err


def test_rps_spaces_request_starts(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ChatServer(lambda rid, n: ("ok",)) as server:
        gen = OpenAIGenerator(server.base_url, OpenAIParams(model="m", concurrency=8, rps=20))
        results = gen.generate(requests_for(6))
    starts = sorted(t for ts in server.times.values() for t in ts)
    assert all(r.ok for r in results) and all(r.usage and r.usage["completion_tokens"] > 0 for r in results)
    assert starts[-1] - starts[0] >= 5 / 20 * 0.9  # 6 starts at least 1/20 s apart, though 8 may be in flight


def test_a_completion_echoing_the_key_is_scrubbed_and_oversized_bodies_refused(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    reqs = requests_for(2)
    with ChatServer(lambda rid, n: ("echo-auth-200",)) as server:
        results = OpenAIGenerator(server.base_url, OpenAIParams(model="m", key_env=KEY_ENV)).generate(reqs)
        small = OpenAIGenerator(server.base_url, OpenAIParams(model="m", key_env=KEY_ENV, max_completion_bytes=10))
        refused = small.generate(reqs[:1])
    assert server.auth[0] == f"Bearer {KEY}"
    assert all(r.ok and KEY not in r.text and "***" in r.text for r in results)
    assert not refused[0].ok and "exceeds max_completion_bytes=10" in refused[0].error


def test_default_key_goes_only_to_openai(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ChatServer(lambda rid, n: ("ok",)) as server:
        gen = OpenAIGenerator(server.base_url, OpenAIParams(model="m"))  # no key_env: a third-party URL
        assert all(r.ok for r in gen.generate(requests_for(2)))
    assert server.auth and all(a is None for a in server.auth)
    assert OpenAIGenerator("https://api.openai.com/v1", OpenAIParams(model="m"))._key == KEY


def test_a_30_mb_completion_is_refused_unparsed_and_never_written(world, tmp_path, monkeypatch, capsys):
    """Issue 17 case 7: one 30 MB completion cost 5.4 GB RSS and 98 s and wrote a 60 MB rejected.jsonl. Under the
    default max_completion_bytes (1 MiB) it is that request's error, dropped as it streams in: the run fails (every
    request failed) with one line naming the bound, rejected.jsonl records each slot's error, not the body, and
    memory does not grow with the body (a 2 MiB run first: model, SAE and server are in the peak already)."""
    import resource
    import time

    from cli_inprocess import qscope

    monkeypatch.setenv(KEY_ENV, KEY)

    def synth(n_bytes: int, out: Path) -> tuple[int, str]:
        with ChatServer(lambda rid, n: ("huge", n_bytes)) as server:
            code, _, err = qscope("synth", "--gaps", world.gaps, "--model", world.model, "--sae", world.sae, "--out",
                                  out, "--generator", f"openai:{server.base_url}?model=tiny&key_env={KEY_ENV}"
                                  "&max_retries=0", "--per-feature", "1", "--max-attempts", "1", "--languages", "en",
                                  "--no-progress", capsys=capsys)
        return code, err

    _huge_body(30 << 20)  # the server's body, built before the peak is read
    assert synth(2 << 20, tmp_path / "small")[0] == 1
    peak, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    out = tmp_path / "out"
    code, err = synth(30 << 20, out)
    errors = [line for line in err.splitlines() if line.startswith("qscope: error:")]
    assert code == 1 and len(errors) == 1 and "exceeds max_completion_bytes=1,048,576" in errors[0], err
    assert time.monotonic() - start < 60
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 << 10  # KiB: no 30 MB body held per request
    lines = (out / "rejected.jsonl").read_text().splitlines()  # one per slot: its error, never the body
    assert lines and all(len(line) < 1000 and "exceeds max_completion_bytes" in line for line in lines)
    assert not (out / "summary.json").exists() and not (out / "accepted.jsonl").exists()


def test_synth_where_every_request_gets_401_exits_non_zero(world, tmp_path, monkeypatch, capsys):
    from cli_inprocess import qscope

    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "out"
    with ChatServer(lambda rid, n: ("status", 401, None)) as server:
        code, _, err = qscope("synth", "--gaps", world.gaps, "--model", world.model, "--sae", world.sae, "--out", out,
                              "--generator", f"openai:{server.base_url}?model=tiny&key_env={KEY_ENV}&max_retries=0",
                              "--per-feature", "1", "--max-attempts", "1", "--languages", "en", "--no-progress",
                              capsys=capsys)
    assert code == 1 and "every generator request failed" in err and "HTTP 401" in err and KEY not in err
    assert not (out / "summary.json").exists() and (out / "rejected.jsonl").is_file()


def test_a_server_echoing_the_key_in_its_completions_gets_it_written_nowhere(world, tmp_path, monkeypatch, capsys):
    """Issue 17 case 6 end to end: every completion repeats the Authorization header; the run's files (accepted and
    rejected samples, the Parquet, the verification store) hold the key nowhere, and nor does the output."""
    from cli_inprocess import qscope

    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "out"
    with ChatServer(lambda rid, n: ("echo-auth-200",)) as server:
        code, printed, err = qscope("synth", "--gaps", world.gaps, "--model", world.model, "--sae", world.sae, "--out",
                                    out, "--generator", f"openai:{server.base_url}?model=tiny&key_env={KEY_ENV}",
                                    "--per-feature", "1", "--max-attempts", "1", "--languages", "en", "--no-progress",
                                    capsys=capsys)
    assert code == 0, err
    assert server.auth and all(a == f"Bearer {KEY}" for a in server.auth)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and (out / "rejected.jsonl").is_file()
    assert "your header was Bearer ***" in (out / "rejected.jsonl").read_text() + (out / "accepted.jsonl").read_text()
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in printed + err


def test_a_failed_rerun_over_a_finished_synthesis_leaves_no_summary_claiming_success(world, tmp_path, monkeypatch,
                                                                                      capsys):
    """`--overwrite` into a folder holding an earlier, successful run: when every request of the new run fails, the
    folder holds that failure (rejected.jsonl) and none of the earlier run's summary, samples or store."""
    from cli_inprocess import qscope

    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "out"
    base = ["synth", "--gaps", world.gaps, "--model", world.model, "--sae", world.sae, "--out", out, "--per-feature", "1",
            "--max-attempts", "1", "--languages", "en", "--no-progress"]
    with ChatServer(lambda rid, n: ("ok",)) as server:
        code, _, err = qscope(*base, "--generator", f"openai:{server.base_url}?model=tiny&key_env={KEY_ENV}", capsys=capsys)
    assert code == 0 and (out / "summary.json").is_file() and (out / "store" / "manifest.json").is_file(), err
    with ChatServer(lambda rid, n: ("status", 401, None)) as server:
        code, _, err = qscope(*base, "--overwrite", "--generator",
                              f"openai:{server.base_url}?model=tiny&key_env={KEY_ENV}&max_retries=0", capsys=capsys)
    assert code == 1 and "every generator request failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["rejected.jsonl"]
    assert all("HTTP 401" in json.loads(line)["detail"] for line in (out / "rejected.jsonl").read_text().splitlines())
