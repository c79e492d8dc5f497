"""Sweep specs without Ray: loading, validation errors naming the key, the tiny merge, grid
expansion with conditions, Optuna's define-by-run space, per-trial configs, the report files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from liveedit.cli import main
from liveedit.config import ConfigError, from_dict
from liveedit.sweeps.report import SweepRecord, TrialRecord, table_of, write_report
from liveedit.sweeps.spec import (
    METRIC_KEYS,
    DefineByRun,
    SweepSpec,
    grid_points,
    load_spec,
    merge,
    resolve_trial,
    spec_hash,
    trial_label,
)

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "sweeps").glob("*.yaml"))
SHIPPED = {
    "fig3_dm_r",
    "fig4_k",
    "fig5_le",
    "table1_lifelong",
    "table2_ablation",
    "optuna_search",
}


def write(tmp_path: Path, data: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def base_spec(**changes) -> dict:
    data = {
        "name": "unit",
        "base": {
            "train": {"steps": 4, "checkpoint_every": 2, "editor": {"d_m": 32, "heads": 4}},
            "eval": {"edits": [2], "max_records": 4},
        },
        "search": {"train.editor.d_m": {"grid": [32, 64]}},
        "searcher": {"type": "grid"},
    }
    data.update(changes)
    return data


def problems_of(tmp_path: Path, data: dict, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, data), overrides)
    return str(info.value)


def test_every_shipped_spec_and_its_tiny_variant_load() -> None:
    assert SHIPPED <= {p.stem for p in SPECS}
    for path in SPECS:
        full = load_spec(path)
        tiny = load_spec(path, tiny=True)
        assert full.name == path.stem and tiny.name == f"{path.stem}_tiny"
        assert tiny.base.train.steps <= 10 and tiny.base.eval.max_records <= 8
        assert tiny.base.distributed.workers == 0  # the laptop path: single-process training
        assert full.objective_edits in full.base.eval.edits
        assert tiny.objective_edits in tiny.base.eval.edits
        assert spec_hash(full) != spec_hash(tiny)
    fig3 = load_spec(ROOT / "sweeps" / "fig3_dm_r.yaml")
    assert len(grid_points(fig3)) == 16 and fig3.report.kind == "grid2d"
    ablation = load_spec(ROOT / "sweeps" / "table2_ablation.yaml", tiny=True)
    labels = [trial_label(ablation, p) for p in grid_points(ablation)]
    assert labels == ["N/A", "LiveEdit", "- ℓsr1", "- ℓsr2", "- SR", "HR*"]
    na = resolve_trial(ablation, {"setting": "N/A"})
    assert na.eval.editor == "none" and not na.eval.trains
    sr = resolve_trial(ablation, {"setting": "- SR"})
    assert sr.train.editor.no_soft_routing and sr.eval.trains
    lifelong = load_spec(ROOT / "sweeps" / "table1_lifelong.yaml", tiny=True)
    ft = resolve_trial(lifelong, {"editor": "FT-L"})
    assert ft.eval.editor == "ft-l" and ft.eval.editor_options == {"lr": 1e-3, "steps": 3}


def test_errors_name_the_key(tmp_path: Path) -> None:
    text = problems_of(tmp_path, base_spec(), "base.train.stepz=3")
    assert "base.train.stepz: unknown key" in text
    bad = base_spec(search={"train.editor.d_m": {"grid": [32], "uniform": [1, 2]}})
    assert "search.train.editor.d_m.values: give exactly one of" in problems_of(tmp_path, bad)
    bad = base_spec(search={"train.editor.dm": {"grid": [32]}})
    assert "search.train.editor.dm" in problems_of(tmp_path, bad)
    assert "unknown key" in problems_of(tmp_path, bad)
    bad = base_spec(search={"train.editor.d_m": {"grid": [30]}})  # 30 % 4 heads != 0
    assert "search.train.editor.d_m" in problems_of(tmp_path, bad)
    bad = base_spec(search={"train.editor.lr": {"loguniform": [1e-4, 1e-2]}})
    assert "needs searcher.type=optuna" in problems_of(tmp_path, bad)
    bad = base_spec(
        search={
            "train.editor.heads": {"grid": [4, 8], "when": "train.editor.dm >= 64"},
        }
    )
    assert "search.train.editor.heads.when: 'train.editor.dm'" in problems_of(tmp_path, bad)
    bad = base_spec(search={"train.editor.heads": {"grid": [4], "when": "d_m ~ 3"}})
    assert "search.train.editor.heads.when: cannot read" in problems_of(tmp_path, bad)
    bad = base_spec(objective={"edits": 7})
    assert "objective.edits: 7 is not one of base.eval.edits" in problems_of(tmp_path, bad)
    bad = base_spec(report={"kind": "grid2d", "x": "train.editor.d_m"})
    assert "report.y: required by report.kind=grid2d" in problems_of(tmp_path, bad)
    bad = base_spec(name="fig 3 @ today")
    assert "name:" in problems_of(tmp_path, bad)
    bad = base_spec(tiny={"base": {"train": {"stepz": 1}}})
    assert "tiny: base.train.stepz: unknown key" in problems_of(tmp_path, bad)
    bad = base_spec(search={"setting": {"variants": {"x": {"train.editor.no_sr3": True}}}})
    assert "search.setting.variants.x" in problems_of(tmp_path, bad)


def test_tiny_merge_and_overrides(tmp_path: Path) -> None:
    assert merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}, "d": None}) == {
        "a": {"b": 5, "c": 2}
    }
    data = base_spec(tiny={"base": {"train": {"steps": 2}}, "search": {"train.editor.d_m": None}})
    path = write(tmp_path, data)
    tiny = load_spec(path, tiny=True)
    assert tiny.name == "unit_tiny" and tiny.base.train.steps == 2 and not tiny.search
    spec = load_spec(path, ["search.train.editor.d_m.grid=[16,64]", "num_samples=2"])
    assert spec.search["train.editor.d_m"].grid == [16, 64] and spec.num_samples == 2
    spec = load_spec(path, ["search.train.editor.r.grid=[1,2]"])  # a new parameter
    assert spec.search["train.editor.r"].grid == [1, 2]
    assert spec_hash(load_spec(path, ["concurrency=3", "tracking.uri=x"])) == spec_hash(
        load_spec(path)
    )
    assert spec_hash(load_spec(path, ["base.train.steps=3"])) != spec_hash(load_spec(path))


def conditional_spec() -> SweepSpec:
    data = base_spec(
        search={
            "train.editor.d_m": {"grid": [32, 64, 128]},
            "train.editor.heads": {"grid": [4, 8], "when": "train.editor.d_m >= 64"},
        }
    )
    return from_dict(SweepSpec, data)


def test_grid_points_branch_only_where_the_condition_holds() -> None:
    spec = conditional_spec()
    points = grid_points(spec)
    assert points == [
        {"train.editor.d_m": 32},
        {"train.editor.d_m": 64, "train.editor.heads": 4},
        {"train.editor.d_m": 64, "train.editor.heads": 8},
        {"train.editor.d_m": 128, "train.editor.heads": 4},
        {"train.editor.d_m": 128, "train.editor.heads": 8},
    ]
    trial = resolve_trial(spec, points[0])
    assert trial.train.editor.d_m == 32 and trial.train.editor.heads == 4  # the base value
    assert trial_label(spec, points[2]) == "d_m=64, heads=8"


def test_define_by_run_space_with_optuna() -> None:
    import optuna

    data = base_spec(
        searcher={"type": "optuna"},
        search={
            "train.editor.d_m": {"choice": [32, 64]},
            "train.editor.heads": {"choice": [4, 8], "when": "train.editor.d_m >= 64"},
            "train.editor.r": {"randint": [1, 8]},
            "train.editor.lr": {"loguniform": [1e-4, 1e-2]},
            "train.editor.k": {"randint": [2, 8], "step": 2},
        },
    )
    spec = from_dict(SweepSpec, data)
    space = DefineByRun(spec)
    import pickle

    space = pickle.loads(pickle.dumps(space))  # Tune saves the searcher with the experiment
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen = set()
    for _ in range(12):
        trial = study.ask()
        space(trial)
        params = trial.params
        assert ("train.editor.heads" in params) == (params["train.editor.d_m"] >= 64)
        assert 1 <= params["train.editor.r"] <= 8 and params["train.editor.k"] % 2 == 0
        assert 1e-4 <= params["train.editor.lr"] <= 1e-2
        resolve_trial(spec, params)  # every suggestion is a valid trial config
        seen.add(params["train.editor.d_m"])
        study.tell(trial, 0.5)
    assert seen == {32, 64}


def test_cli_dry_run(tiny_world: Path, tiny_llava_dir: Path, capsys) -> None:
    spec = str(ROOT / "sweeps" / "fig4_k.yaml")
    paths = [f"base.train.world={tiny_world}", f"base.train.backbone={tiny_llava_dir}"]
    assert main(["sweep", spec, "--tiny", "--dry-run", *paths, "base.train.editor.layer=2"]) == 0
    out = capsys.readouterr().out
    assert "fig4_k_tiny" in out and "3 trials" in out and "k=4" in out
    # the tiny twin has 4 layers: l_e = 5 is refused before any compute
    assert main(["sweep", spec, "--tiny", "--dry-run", *paths, "base.train.editor.layer=5"]) == 1
    assert "train.editor.layer: 5 is outside the backbone's 4 layers" in capsys.readouterr().out
    assert main(["sweep", spec, "--tiny", "base.train.nope=1"]) == 1
    assert "base.train.nope: unknown key" in capsys.readouterr().err


def record(kind: str, **settings) -> SweepRecord:
    trials = []
    for i, (d_m, r, label) in enumerate(
        [(32, 1, "N/A"), (32, 4, "LiveEdit"), (64, 1, "- SR"), (64, 4, "HR*")]
    ):
        metrics = {"objective": 0.5 + i / 10, "trainable_params": 1000.0 * d_m * (1 + r / 10)}
        for edits in (1, 2):
            for j, key in enumerate(METRIC_KEYS):
                metrics[f"e{edits}/{key}"] = 0.4 + 0.1 * j + i / 20 - edits / 50
                metrics[f"e{edits}/{key}_std"] = 0.01
            metrics.update({f"e{edits}/n_records": 4, f"e{edits}/n_chunks": 2})
        trials.append(
            TrialRecord(
                run_id=f"r{i}",
                trial_id=f"t{i}",
                label=label,
                status="completed" if i < 3 else "stopped",
                params={"train.editor.d_m": str(d_m), "train.editor.r": str(r)},
                metrics=metrics,
                start_time=i,
            )
        )
    order = {"setting": ["N/A", "LiveEdit", "- SR", "HR*"]}
    return SweepRecord(
        name=f"unit_{kind}",
        experiment="unit",
        run_id="p",
        settings={"kind": kind, "edits": 2, "metric": "average", "order": order, **settings},
        objective={"metric": "average", "edits": 2, "mode": "max"},
        locality="liveedit",
        trials=trials,
    )


def test_report_files_from_records(tmp_path: Path) -> None:
    grid = write_report(record("grid2d", x="train.editor.d_m", y="train.editor.r"), tmp_path)
    curves = write_report(record("curves", x="train.editor.d_m"), tmp_path / "c")
    table = write_report(record("table", rows="label"), tmp_path / "t")
    for files in (grid, curves, table):
        assert all(f.is_file() and f.stat().st_size > 0 for f in files)
        assert {"trials.md", "trials.csv", "objective.png"} <= {f.name for f in files}
    assert (tmp_path / "unit_grid2d.png").is_file()
    assert (tmp_path / "c" / "unit_curves.png").is_file()
    markdown = (tmp_path / "t" / "unit_table.md").read_text()
    rows = [line.split("|")[3].strip() for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[2:5] == ["N/A", "LiveEdit", "- SR"]  # spec order; the stopped trial is left out
    assert len(table_of(record("table", rows="label")).rows) == 6  # 3 settings x 2 T
    trials = (tmp_path / "trials.md").read_text()
    assert trials.index("t2") < trials.index("t1") < trials.index("t0")  # best first


def test_metric_keys_are_the_protocols() -> None:
    from liveedit.evaluation.lifelong import SUMMARY_KEYS

    assert METRIC_KEYS == SUMMARY_KEYS
