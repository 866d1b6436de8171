"""The fuzz suite's fast subset and the rule that keeps it general: every option of every
command is declared with a type of the validation layer (cli.common), so the fuzzer knows
its hostile values and the command can never see an unchecked number or file."""
from __future__ import annotations

import shutil

import click
import pytest

from cli import main
from cli.common import BaseName, InFile, Number, NumberList, OutPath


def test_every_number_and_path_option_is_declared_through_the_validation_layer():
    loose = []
    for name, cmd in main.commands.items():
        for p in cmd.params:
            t = p.type
            if isinstance(t, (click.types.FloatParamType, click.types.IntParamType, click.Path,
                              click.types.FloatRange, click.types.IntRange)):
                loose.append(f"{name} {p.name}: {type(t).__name__}")
    assert loose == []


def test_every_command_has_a_fuzz_baseline_and_hostile_values_for_each_option(tmp_path):
    from validation.fuzz_cli import BASELINE, cases

    assert set(BASELINE) == set(main.commands)
    cs = cases(tmp_path)
    for name, cmd in main.commands.items():
        typed = [p for p in cmd.params if isinstance(p.type, (Number, NumberList, InFile, OutPath, BaseName))]
        fuzzed = {c.option for c in cs if c.command == name}
        for p in typed:
            label = max(p.opts, key=len) if isinstance(p, click.Option) else p.human_readable_name
            assert label in fuzzed, (name, label)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cutem") is None, reason="the cutem console script is not installed")
def test_two_fuzz_cases_per_command_end_in_a_one_line_refusal_or_success_and_touch_no_input():
    from validation.fuzz_cli import run

    todo, results, changed = run(per_command=2, jobs=2)
    assert changed == []
    bad = [(c.command, c.option, c.value, r[:3]) for c, r in zip(todo, results) if r[0] == "failure"]
    assert bad == []
    assert sum(r[0] == "refused" for r in results) >= len(results) // 2  # most hostile values are refused
