"""dvc.yaml lists, for every stage, exactly the fgbg modules its command runs, derived here from
the imports (transitively, function-level imports included), so a code change reruns exactly the
stages it touches and no dep can drift as modules gain imports."""

from __future__ import annotations

from pathlib import Path

import yaml

from fgbg.shards import fgbg_imports, module_closure

ROOT = Path(__file__).resolve().parents[1]
# the module each `fgbg <command>` stage runs; cli.py itself only parses options and calls it
STAGE_MODULES = {"synth": "synth", "prepare": "prepare", "compose": "compose", "depth": "depth", "stats": "stats",
                 "train": "train", "evaluate": "evaluate", "check-captures": "captures"}  # fmt: skip


def stage_code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if isinstance(d, str) and d.startswith("src/fgbg/")}


def test_every_stage_lists_exactly_the_modules_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, spec in stages.items():
        module = STAGE_MODULES[name]
        want = {f"src/fgbg/{m}.py" for m in module_closure(module)}
        got = stage_code_deps(spec)
        if got != want:
            problems.append(f"{name}: missing {sorted(want - got)}, not run {sorted(got - want)}")
    assert not problems, "dvc.yaml code deps drifted:\n" + "\n".join(problems)
    assert set(stages) <= set(STAGE_MODULES)


def test_the_import_walk_sees_function_level_imports():
    # cli imports every stage module inside its commands only; the walk must see them
    assert {"synth", "compose", "train", "config"} <= fgbg_imports("cli")
    assert "config" in module_closure("synth") and "images" in module_closure("synth")
