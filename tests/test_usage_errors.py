"""A value pydantic refuses reads the same wherever it comes from (a config key, an inventory entry, a case or rule
file, an options model built from flags, a generator parameter): `WHERE: FIELD: what is wrong (got VALUE)`, one
line, exit 2 — the one conversion in `qscope_data.errors.invalid`."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_inprocess import qscope
from qscope_data.config import load_config
from qscope_data.coverage.inventory import load_inventory
from qscope_data.errors import UsageError
from qscope_data.rules.cases import load_cases
from qscope_data.rules.rulefile import load_rule_file
from qscope_data.sae.train import TrainConfig
from qscope_data.sasft.artifact import PLAN_FILE, PLAN_FORMAT, PLAN_VERSION, load_plan
from qscope_data.synth.generators import build_generator

CONFIG = "model: {id: m}\nsae: {path: s, layer: 1}\ncorpora: {texts: {input: [t.jsonl]}}\n"


def _file(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text)
    return tmp / name


CASES = {
    "config value": (lambda t: load_config(_file(t, "a.yaml", CONFIG + "encode: {batch_size: 0}\n")),
                     "{t}/a.yaml: encode.batch_size: Input should be greater than or equal to 1 (got 0)"),
    "config check": (lambda t: load_config(_file(t, "b.yaml", CONFIG + "rules: {files: []}\nscore: {corpus: nope}\n")),
                     "{t}/b.yaml: (top level): score.corpus names corpus 'nope', which is not under corpora: (texts)"),
    "config typo": (lambda t: load_config(_file(t, "c.yaml", CONFIG + "encode: {batch_sise: 4}\n")),
                    "{t}/c.yaml: encode.batch_sise: Extra inputs are not permitted (unknown key 'batch_sise')"),
    "inventory": (lambda t: load_inventory(_file(t, "i.yaml", "features:\n  - {id: -1, category: weapons}\n")),
                  "inventory {t}/i.yaml: features.0.id: Input should be greater than or equal to 0 (got -1)"),
    "cases": (lambda t: load_cases(_file(t, "k.yaml", "cases:\n  - {name: a, n_positions: -3, expect: {x: true}}\n")),
              "{t}/k.yaml: cases.0.n_positions: Input should be greater than or equal to 0 (got -3)"),
    "rule file": (lambda t: load_rule_file(_file(t, "r.yaml", "rules:\n  - name: x\n    when: fires(f1)\n    action: boom\n")),
                  "{t}/r.yaml:4: rule 'x': rules.0.action: Input should be 'drop', 'flag' or 'keep' (got 'boom')"),
    "sae train": (lambda t: TrainConfig.parse(model="m", layer=1, inputs=["x"], width=64, k=0),
                  "sae train: k: Input should be greater than 0 (got 0)"),
    "generator": (lambda t: build_generator("lm?shots=many"),
                  "--generator lm: shots: Input should be a valid integer, unable to parse string as an integer "
                  "(got 'many'); its parameters: steer_alpha, positions, shots, max_new_tokens, response_tokens, "
                  "temperature, top_p, repetition_penalty, penalize_prompt, keyword_bias, batch_size, seed"),
    "sasft plan": (lambda t: load_plan(_file(t, PLAN_FILE, f'{{"format": "{PLAN_FORMAT}", "version": {PLAN_VERSION}, '
                                                           '"layer": "top"}')),
                   "{t}/sasft.json: invalid SASFT plan: layer: Input should be a valid integer, unable to parse "
                   "string as an integer (got 'top')"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_library_conversion_has_the_one_form(case, tmp_path):
    call, expected = CASES[case]
    with pytest.raises(UsageError) as exc:
        call(tmp_path)
    assert str(exc.value) == expected.format(t=tmp_path)


@pytest.mark.parametrize("args, expected", [
    (["rules", "mine", "--features", "s", "--out", "o.yaml", "--top", "0"],  # an options model built from flags
     "--top: Input should be greater than or equal to 1 (got 0)"),
    (["sasft", "prepare", "--model", "m", "--sae", "s", "--layer", "1", "--input", "x.jsonl", "--top", "0", "--out", "o"],
     "sasft prepare: top: Input should be greater than or equal to 1 (got 0)"),
    (["features", "explain", "--features", "s", "--out", "o", "--ids", "1", "--window", "1"],
     "features explain: window: Input should be greater than or equal to 2 (got 1)"),
])
def test_commands_print_it_as_one_line_and_exit_2(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = qscope(*args, capsys=capsys)
    assert code == 2 and err.strip().splitlines() == [f"qscope: error: {expected}"], err
