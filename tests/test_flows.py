"""`qscope run` drives every stage as Prefect flows and tasks (ephemeral server), with retries, caching, the GPU
concurrency limit and markdown artifacts — on a tiny random Qwen3, a random Qwen-Scope SAE and a slice of the
shipped demo corpus.

One Prefect test server for the whole session (start-up dominates: ~20 s on a quiet machine).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

import qscope_flows  # noqa: F401  (sets the Prefect environment defaults before prefect is imported)
from qscope_data.cli import main
from qscope_data.demo.corpus import SFT, TEXTS

# One xdist worker runs every test here, so they share one Prefect test server (start-up is the slow part).
pytestmark = pytest.mark.xdist_group("prefect")


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
        # Prefect's console handler still points at a capture stream pytest has closed by now.
        logging.raiseExceptions = False


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, tiny_model_dir, sae_dir) -> Path:
    """Fixture files and a config using every stage; the workdir is shared by the tests below, in order."""
    root = tmp_path_factory.mktemp("pipeline")
    texts = [json.loads(line) for line in TEXTS.read_text(encoding="utf-8").splitlines()]
    english = [t for t in texts if t["lang"] == "en"]
    (root / "texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in english[:: max(1, len(english) // 120)][:120]))
    sft = [json.loads(line) for line in SFT.read_text(encoding="utf-8").splitlines()]
    (root / "sft.jsonl").write_text("".join(json.dumps(t) + "\n" for t in sft[:24]))
    (root / "rules.yaml").write_text('rules:\n  - name: harassing\n    when: category == "harassment" or act(f3) > 5\n'
                                     "    action: drop\n")
    config = {
        "name": "flows-test",
        "workdir": "./run",
        "model": {"id": str(tiny_model_dir("qwen3")), "dtype": "float32"},
        "sae": {"path": str(sae_dir(d_model=64, layers=(1,))), "layer": 1},
        "corpora": {"texts": {"input": ["texts.jsonl"], "max_tokens": 32},
                    "sft": {"input": ["sft.jsonl"], "max_tokens": 48}},
        "encode": {"batch_size": 16, "shard_rows": 64},
        "rules": {"files": ["rules.yaml"], "mine": {"corpus": "texts", "label_field": "label", "positive": "toxic", "top": 3}},
        "score": {"corpus": "sft"},
        "inventory": {"corpus": "texts", "label_field": "category", "negative": "benign", "top": 6, "min_support": 1},
        "gaps": {"target": "sft", "min_docs": 2},
        "synth": {"generator": "offline", "per_feature": 1, "max_attempts": 2, "languages": ["en"], "max_features": 2},
        "curate": {"corpus": "sft", "format": "messages"},
        "orchestration": {"retries": 2, "retry_delay_seconds": [0.1, 0.2]},
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def flow_runs_of(config_path: Path) -> list:
    """Top-level pipeline runs of this config, oldest first, each with the task runs of its stage subflows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_ASC)
                if r.parameters.get("config_path") == str(config_path)]
        parent = {r.id: client.read_task_run(r.parent_task_run_id).flow_run_id for r in runs if r.parent_task_run_id}
        out = []
        for top in [r for r in runs if r.parent_task_run_id is None]:
            children = [rid for rid, pid in parent.items() if pid == top.id]
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=children)))
            out.append((top, tasks))
        return out


def stage_tasks(tasks: list) -> dict[str, list]:
    by: dict[str, list] = {}
    for t in tasks:
        by.setdefault(t.name.split("-")[0], []).append(t)
    return by


def test_run_executes_every_stage_retries_a_failure_and_reruns_from_cache(prefect_server, workspace, monkeypatch, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from qscope_data import stages

    # A score stage that fails once (a transient I/O error, remembered by a marker file), then works.
    marker = workspace / "score-failed-once"
    real_score = stages.score_corpus

    def flaky_score(*args, **kwargs):
        if not marker.exists():
            marker.write_text("failed")
            raise OSError("scores volume briefly unavailable")
        return real_score(*args, **kwargs)

    monkeypatch.setattr(stages, "score_corpus", flaky_score)
    config_path = (workspace / "pipeline.yaml").resolve()
    main(["run", str(config_path)])
    printed = capsys.readouterr().out
    run = workspace / "run"

    # Every stage's output is there.
    for store in ("texts", "sft"):
        assert (run / "stores" / store / "manifest.json").is_file()
    assert "rules:" in (run / "rules" / "mined.yaml").read_text()
    assert json.loads((run / "scores" / "sft" / "summary.json").read_text())["n_documents"] == 24
    assert "features:" in (run / "inventory.yaml").read_text()
    gaps = json.loads((run / "gaps" / "gaps.json").read_text())
    assert gaps["gaps"] and (run / "gaps" / "report.html").is_file()
    assert json.loads((run / "synth" / "summary.json").read_text())["totals"]["requested"] >= 1
    curated = json.loads((run / "shards" / "manifest.json").read_text())
    assert curated["counts"]["input_records"] == 24 and curated["counts"]["removed_by_reason"]
    assert f"curated: {run / 'shards'}" in printed

    # Every stage ran as a task; score failed once and was retried.
    (first, tasks), = flow_runs_of(config_path)
    assert first.state.is_completed()
    by = stage_tasks(tasks)
    assert set(by) == {"encode", "mine", "score", "select", "gaps", "synth", "curate"}
    assert len(by["encode"]) == 2
    (score,) = by["score"]
    assert score.run_count == 2 and score.state.is_completed()
    with get_client(sync_client=True) as client:
        history = [s.name for s in client.read_task_run_states(score.id)]
        assert "AwaitingRetry" in history or "Retrying" in history
        # The GPU stages' global concurrency limit was created, and the gap report was published as an artifact.
        assert client.read_global_concurrency_limit_by_name("qscope-gpu").limit == 1
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["flows-test-gaps-report"])))
        assert artifacts and "Safety-feature coverage" in artifacts[0].data

    # A rerun hits the cache everywhere and leaves the outputs alone.
    stamp = (run / "shards" / "manifest.json").stat().st_mtime_ns
    main(["run", str(config_path)])
    (_, _), (second, tasks2) = flow_runs_of(config_path)
    assert second.state.is_completed()
    assert {t.state.name for t in tasks2} == {"Cached"} and len(tasks2) == len(tasks)
    assert (run / "shards" / "manifest.json").stat().st_mtime_ns == stamp

    # A deleted output is not "Cached": the stage that wrote it runs again and the output is back (issue 17).
    for shard in (run / "shards" / "data").glob("*.parquet"):
        shard.unlink()
    (run / "inventory.yaml").unlink()
    main(["run", str(config_path)])
    (_, _), (_, _), (third, tasks3) = flow_runs_of(config_path)
    assert third.state.is_completed()
    states = {name: {t.state.name for t in ts} for name, ts in stage_tasks(tasks3).items()}
    assert states["curate"] == {"Completed"} and states["select"] == {"Completed"} and states["mine"] == {"Cached"}
    assert list((run / "shards" / "data").glob("*.parquet")) and (run / "inventory.yaml").is_file()


def test_a_usage_error_in_a_stage_is_not_retried_and_exits_2(prefect_server, workspace, capsys):
    """A rule naming a missing field fails the score stage for good: no retry, `qscope run` exits 2 with one line.
    The stages before it succeed (from the cache when an earlier test ran the same workdir) and are not retried."""
    bad = yaml.safe_load((workspace / "pipeline.yaml").read_text())
    (workspace / "bad-rules.yaml").write_text("rules:\n  - name: broken\n    when: no_such_field == 1\n")
    bad["rules"]["files"] = ["bad-rules.yaml"]
    bad["orchestration"]["retries"] = 3
    path = (workspace / "bad.yaml").resolve()
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(SystemExit) as exc:
        main(["run", str(path)])
    assert exc.value.code == 2
    printed = capsys.readouterr().err
    err = [line for line in printed.splitlines() if line.startswith("qscope: error:")]
    assert len(err) == 1 and "bad-rules.yaml:3:11" in err[0] and "no_such_field" in err[0]
    ((_, tasks),) = flow_runs_of(path)
    by = stage_tasks(tasks)
    assert {t.state.name for t in by["encode"] + by["mine"]} <= {"Cached", "Completed"}
    assert all(t.run_count <= 1 for t in by["encode"] + by["mine"])
    (score,) = by["score"]
    assert score.run_count == 1 and score.state.is_failed()


def test_the_weekly_gap_report_flow_runs_on_its_own(prefect_server, workspace):
    """The `weekly-gap-report` deployment's entrypoint: gaps_flow(config_path) encodes what it needs (cached here)
    and recomputes nothing that has not changed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from qscope_flows.stages import gaps_flow

    config_path = str((workspace / "pipeline.yaml").resolve())
    state = gaps_flow(config_path, return_state=True)
    out = state.result()
    assert out == {"inventory": str(workspace / "run" / "inventory.yaml"), "gaps": str(workspace / "run" / "gaps")}
    with get_client(sync_client=True) as client:
        flow_run_id = state.state_details.flow_run_id
        children = [r for r in client.read_flow_runs() if r.parent_task_run_id
                    and client.read_task_run(r.parent_task_run_id).flow_run_id == flow_run_id]
        wrappers = {r.parent_task_run_id for r in children}  # the task run standing for a subflow call
        ids = [flow_run_id, *(r.id for r in children)]
        tasks = [t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
                 if t.id not in wrappers]
    assert sorted(t.name.split("-")[0] for t in tasks) == ["encode", "encode", "gaps", "select"]
    assert {t.state.name for t in tasks} == {"Cached"}


def _variant(workspace: Path, name: str, change) -> Path:
    """The workspace config with `change` applied, saved as `name`."""
    config = yaml.safe_load((workspace / "pipeline.yaml").read_text())
    change(config)
    path = (workspace / name).resolve()
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _qscope_run(path: Path, **env: str):
    """`qscope run` as a user runs it: its own process (its own stderr, where Prefect's console log goes), on the
    test server."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    return subprocess.run([sys.executable, "-m", "qscope_data", "run", str(path)], capture_output=True, text=True,
                          env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **env}, timeout=400)


def test_a_run_where_every_generation_request_fails_exits_non_zero_with_one_line_per_failure(prefect_server, workspace):
    """A generator that answers every request 401 fails the synth stage (after its retries): `qscope run` exits 1
    naming the first error, and without --debug Prefect's failure logs are one line each — no traceback."""
    from test_synth_http import KEY, KEY_ENV, ChatServer

    with ChatServer(lambda rid, n: ("status", 401, None)) as server:
        path = _variant(workspace, "401.yaml", lambda c: c["synth"].update(
            generator=f"openai:{server.base_url}?model=tiny&key_env={KEY_ENV}&max_retries=0"))
        ran = _qscope_run(path, **{KEY_ENV: KEY})
        assert server.auth and all(a == f"Bearer {KEY}" for a in server.auth)  # the requests really went out
    printed = ran.stdout + ran.stderr
    assert ran.returncode == 1, printed
    errors = [line for line in ran.stderr.splitlines() if line.startswith("qscope: error:")]
    assert len(errors) == 1 and "every generator request failed" in errors[0] and "HTTP 401" in errors[0], printed
    failures = [line for line in printed.splitlines() if "every generator request failed" in line]
    assert len(failures) >= 3, printed  # Prefect logged the task's tries and the flows' failures: one line each
    assert "Traceback" not in printed and "File \"" not in printed and KEY not in printed, printed
    ((_, tasks),) = flow_runs_of(path)
    (synth,) = stage_tasks(tasks)["synth"]
    assert synth.state.is_failed()
    assert not (workspace / "run" / "synth" / "summary.json").exists()


def test_a_leaked_gpu_slot_times_out_with_how_to_free_it(prefect_server, workspace):
    """A slot of the GPU limit held by nobody (what a run killed inside a GPU stage leaves) makes the next run fail
    after `orchestration.gpu_slot_timeout_s`, exit 2, naming the command that frees it — not wait forever; that
    command frees it, and the slot is taken at once."""
    import os
    import subprocess
    import sys
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL

    from qscope_data.config import load_config
    from qscope_flows.tasks import gpu_slot

    limit = "qscope-gpu-leaked"
    path = _variant(workspace, "leaked.yaml", lambda c: (c.update(workdir="./run-leaked"), c["orchestration"].update(
        gpu_limit=limit, gpu_slot_timeout_s=3)))
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1, active_slots=1))
    ran = _qscope_run(path)  # in its own process: a run that waits forever fails here instead of hanging the suite
    err = [line for line in ran.stderr.splitlines() if line.startswith("qscope: error:")]
    fix = f"prefect gcl update {limit} --active-slots 0"
    assert ran.returncode == 2 and len(err) == 1 and limit in err[0] and fix in err[0] and "within 3 s" in err[0], ran.stderr
    assert "Traceback" not in ran.stderr and not (workspace / "run-leaked" / "stores" / "texts" / "manifest.json").exists()
    ((_, tasks),) = flow_runs_of(path)
    assert [t.run_count for t in stage_tasks(tasks)["encode"]] == [1]  # a UsageError: not retried

    freed = subprocess.run([sys.executable, "-m", "prefect", *fix.split()[1:]], capture_output=True, text=True,
                           env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, timeout=300)
    assert freed.returncode == 0, freed.stderr
    config = load_config(path)
    start = time.monotonic()
    with gpu_slot(config):
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(limit).active_slots == 1
    assert time.monotonic() - start < 10
