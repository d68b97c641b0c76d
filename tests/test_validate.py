"""`qscope validate CONFIG`: config schema, inputs, rule files and the model / SAE pair, checked from headers without
computing anything; the first problem exits 2 with one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qscope_data.cli import main
from qscope_data.config import load_config
from qscope_data.testing import random_sae, write_sae


@pytest.fixture
def project(tmp_path, tiny_model_dir, write_jsonl) -> Path:
    write_jsonl([{"id": "a", "text": "hello there", "label": 1}, {"id": "b", "text": "good day", "label": 0}], "texts.jsonl")
    (tmp_path / "rules.yaml").write_text("sae: {layer: 1, d_sae: 1024}\nrules:\n  - name: loud\n    when: any_fires(f7)\n")
    write_sae(random_sae(64, 1024, 16, layer=1), tmp_path / "sae", "qscope")
    (tmp_path / "model").symlink_to(tiny_model_dir("qwen3"))
    config = {
        "name": "v", "workdir": "./run",
        "model": {"id": "./model"}, "sae": {"path": "./sae", "layer": 1},
        "corpora": {"texts": {"input": ["texts.jsonl"]}},
        "rules": {"files": ["rules.yaml"], "mine": {"corpus": "texts"}},
        "score": {"corpus": "texts"},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def edit(project: Path, change) -> Path:
    cfg = yaml.safe_load((project / "pipeline.yaml").read_text())
    change(cfg)
    path = project / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_validate(path: Path, capsys) -> tuple[int, str, str]:
    try:
        main(["validate", str(path)])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_good_config_passes_with_what_was_checked(project, capsys):
    code, out, err = run_validate(project / "pipeline.yaml", capsys)
    assert code == 0, err
    assert "ok: model" in out and "hidden size 64" in out and "compatible" in out
    assert "ok: rules: 1 file(s), 1 rule(s) parse" in out and "valid (stages: encode, mine, score)" in out
    assert not (project / "run").exists()  # nothing computed, nothing written


def test_canonical_sae_is_judged_from_its_header_alone(project, capsys):
    (project / "sae" / "sae.safetensors").write_bytes(b"not even safetensors")  # weights never read
    assert run_validate(project / "pipeline.yaml", capsys)[0] == 0


@pytest.mark.parametrize("change, message", [
    (lambda c: c["sae"].update(layer=7), "rules.yaml: rules are for SAE layer 1, but sae.layer is 7"),
    (lambda c: (c["sae"].update(layer=7), c["rules"].update(files=[])), "sae.layer 7 is beyond the model's depth"),
    (lambda c: c["corpora"]["texts"].update(input=["missing.jsonl"]), "corpora.texts.input: input missing.jsonl: no such file"),
    (lambda c: c["rules"].update(files=["broken.yaml"]), "broken.yaml:3"),
    (lambda c: c["score"].update(corpus="nope"), "score.corpus names corpus 'nope'"),
    (lambda c: c.update(encode={"executor": "spark"}), "encode.executor"),
    (lambda c: c["sae"].update(path="./qwen/SAE-Res-Tiny-W1K-L0_16"), "d_model 32, but model"),
    (lambda c: c["sae"].update(path="./evil"), "refused"),
])
def test_the_first_problem_exits_2_with_one_line(project, capsys, change, message):
    (project / "broken.yaml").write_text("rules:\n  - name: x\n    when: any_fires(f1 and\n")
    write_sae(random_sae(32, 1024, 16, layer=1), project / "qwen", "qwen-scope", layer=1)
    (project / "evil").mkdir()
    (project / "evil" / "layer1.sae.pt").write_bytes(_malicious_pickle())
    code, out, err = run_validate(edit(project, change), capsys)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("qscope: error:")]
    assert len(lines) == 1 and message in err, err
    assert "executed" not in out  # the malicious pickle's payload never ran


def _malicious_pickle() -> bytes:
    import io
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("executed",))

    buf = io.BytesIO()
    pickle.dump({"W_enc": Boom()}, buf)
    return buf.getvalue()


def test_package_paths_resolve_to_installed_packages(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "model": {"id": "pkg:qscope_data/demo"}, "sae": {"path": "x", "layer": 0},
        "corpora": {"t": {"input": ["pkg:qscope_data/demo/corpus/texts.jsonl"]}}}))
    cfg = load_config(tmp_path / "c.yaml")
    assert Path(cfg.corpora["t"].input[0]).is_file() and Path(cfg.model.id).is_dir()
    (tmp_path / "d.yaml").write_text((tmp_path / "c.yaml").read_text().replace("pkg:qscope_data/demo", "pkg:no_such_pkg_x/m"))
    with pytest.raises(Exception, match="no_such_pkg_x"):
        load_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(workdir="./texts.jsonl"), "workdir"),
    pytest.param(lambda c: c.update(workdir="/etc/hostname"), "/etc/hostname",  # issue 17 case 10, as reported
                 marks=pytest.mark.skipif(not Path("/etc/hostname").is_file(), reason="no /etc/hostname here")),
    (lambda c: c.update(inventory={"corpus": "texts", "label_field": "label", "negative": "0"}, gaps={"target": "texts"},
                        synth={"generator": "openai:ftp://example.org/v1?model=m"}), "ftp://example.org/v1"),
])
def test_validate_refuses_what_run_would_fail_on(project, capsys, change, message):
    code, out, err = run_validate(edit(project, change), capsys)
    lines = [line for line in err.splitlines() if line.startswith("qscope: error:")]
    assert code == 2 and len(lines) == 1 and message in err, err


def test_duplicate_yaml_keys_are_refused_with_their_line(project, capsys):
    text = (project / "pipeline.yaml").read_text()
    (project / "dup.yaml").write_text(text + "name: again\n")
    code, out, err = run_validate(project / "dup.yaml", capsys)
    assert code == 2 and "dup.yaml" in err and "'name' is given twice" in err and "line" in err, err


def test_generator_url_scheme_is_checked_where_validate_parses_the_spec():
    from qscope_data.errors import UsageError
    from qscope_data.synth.generators import parse_generator_spec

    with pytest.raises(UsageError, match="is not an http"):
        parse_generator_spec("openai:ftp://example.org/v1?model=m")  # `check_pipeline` calls this for synth.generator
