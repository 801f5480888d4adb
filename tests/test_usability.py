"""What a new user sees: progress in every mode, a CLI that explains itself, README code."""

import argparse
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import quicdesign
from quicdesign._progress import progress
from quicdesign.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


# -- progress ----------------------------------------------------------------------------
def test_progress_prints_one_line_per_unit_off_a_terminal():
    stream = io.StringIO()
    with progress(3, "designing", None, unit="table", stream=stream) as bar:
        for name in ("a", "b", "c"):
            bar.update(note=name)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("designing: 1/3 table (a) [") and lines[2].startswith(
        "designing: 3/3 table (c)"
    )


def test_progress_is_concise_for_many_units_and_silent_when_disabled():
    stream = io.StringIO()
    with progress(1000, "rounds", True, stream=stream) as bar:
        for _ in range(1000):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("rounds: 1000/1000")
    silent = io.StringIO()
    with progress(5, "quiet", False, stream=silent) as bar:
        bar.update()
    assert silent.getvalue() == ""


def test_progress_is_a_tqdm_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with progress(2, "bar", None, stream=stream) as bar:
        bar.update(2)
    assert "\rbar:" in stream.getvalue() and "0/2" in stream.getvalue()


def test_design_sweep_reports_progress_and_no_highs_banner():
    code = (
        "import solvers; solvers.sweep([(1, 1), (2, 1)], n_jobs=1, starts=1); "
        "solvers.design(1, 1, starts=1)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "HiGHS" not in result.stdout + result.stderr
    assert "designing: 2/2 table (b2-l1-p1in512" in result.stderr


# -- the CLI explains itself ---------------------------------------------------------------
def _parsers(parser, path=("quicdesign",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


def test_every_option_has_help_and_shows_its_default():
    missing = []
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            ignored = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
            if isinstance(action, ignored):
                continue
            name = " ".join(path) + " " + "/".join(action.option_strings or [action.dest])
            # a value option the user may leave out must say what leaving it out means
            optional_value = action.option_strings and action.nargs != 0 and not action.required
            if not action.help:
                missing.append(f"{name}: no help")
            elif (optional_value or action.default not in (None, False)) and (
                "default" not in action.help
            ):
                missing.append(f"{name}: default {action.default!r} not shown")
            elif "terminal only" in action.help:
                missing.append(f"{name}: progress is shown in every mode now")
    assert not missing, missing


@pytest.mark.parametrize(
    "argv, option",
    [
        (["design", "--bits"], "bits"),
        (["design", "--entropy"], "entropy"),
        (["bench", "runtime", "--bits"], "bits"),
        (["bench", "dme", "--bits"], "bits"),
        (["bench", "dme", "--clients"], "clients"),
        (["fl", "run", "mcm", "--seeds"], "seeds"),
    ],
)
def test_every_integer_list_option_takes_every_spelling(argv, option):
    parser = build_parser(argv)
    for spelling in (["1-3"], ["1,2,3"], ["1", "2", "3"], ["1-2", "3"]):
        assert getattr(parser.parse_args([*argv, *spelling]), option) == [1, 2, 3], spelling


def test_integer_lists_refuse_too_many_values_in_total(capsys):
    parser = build_parser(["fl", "run"])
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(
            ["fl", "run", "mcm", "--seeds", *[f"{k * 600}-{k * 600 + 599}" for k in range(2)]]
        )
    assert refused.value.code == 2 and "more than" in capsys.readouterr().err


def test_help_is_plain_text_and_version_is_printed(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"quicdesign {quicdesign.__version__}"


def test_no_certify_prints_off_not_nan(capsys):
    argv = ["design", "--bits", "1", "--shared-bits", "1", "--starts", "1", "--no-certify"]
    assert main([*argv, "--jobs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and " off " in out


@pytest.mark.parametrize(
    "module, command, extra",
    [
        ("matplotlib", ["fl", "list"], "bench"),
        ("cvxpy", ["tables", "list"], "design"),
        ("scipy", ["tables", "list"], "design"),
        ("scipy", ["fl", "list"], "bench"),
        ("constriction", ["tables", "list"], "entropy"),
    ],
)
def test_install_hint_names_the_right_extra(monkeypatch, capsys, module, command, extra):
    def missing(args):
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    import quicdesign.cli as cli
    import quicdesign.fl.cli as fl_cli

    monkeypatch.setattr(cli, "_cmd_tables_list", missing)
    monkeypatch.setattr(fl_cli, "_cmd_list", missing)
    assert main(command) == 2
    assert f"quicdesign[{extra}]" in capsys.readouterr().err


def test_entropy_tables_are_listed_and_named_by_rate(capsys):
    table = quicdesign.load_entropy_table(2)
    assert "rate=2 bits/coordinate" in repr(table) and table.name == "rate2-l6"
    entropy = quicdesign.shipped_tables_dir() / "entropy"
    assert main(["tables", "list", "--path", str(entropy)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["rate", "coding"] and len(out) == 5
    rate2 = next(line.split() for line in out if line.endswith("rate2-l6"))
    # nominal rate 2, 16 messages, 1.998 expected bits per coordinate
    assert rate2[:3] == ["2", "entropy", "4"] and rate2[-2] == "1.9980"
    # one table folder lists the same line
    assert main(["tables", "list", "--path", str(entropy / "rate2-l6")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == rate2


def test_tables_list_prints_nothing_before_an_error(tmp_path, capsys):
    assert main(["tables", "list", "--path", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("quicdesign: error:")


# -- README --------------------------------------------------------------------------------
#: A README code block preceded by this HTML comment (invisible on GitHub) is not run here;
#: the comment must say why, e.g. ``<!-- readme-test: skip: CI runs it (.ci/run) -->``.
SKIP_MARKER = re.compile(r"<!-- readme-test: skip: (?P<reason>[^>]*\S) -->\s*$")
FENCE = re.compile(r"^```(?P<language>[\w-]*)\s*$")


def _readme_blocks():
    """Every fenced block of README.md: (language, code, first line, skip reason or None)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        closing = next(k for k in range(index + 1, len(lines)) if lines[k].startswith("```"))
        above = lines[index - 1] if index else ""
        marker = SKIP_MARKER.match(above)
        code = "\n".join(lines[index + 1 : closing]) + "\n"
        language = opening["language"]
        blocks.append((language, code, index + 1, marker["reason"] if marker else None))
        index = closing + 1
    return blocks


def test_readme_blocks_are_python_or_bash_and_every_skip_says_why():
    blocks = _readme_blocks()
    assert any(language == "python" for language, *_ in blocks)
    assert {language for language, *_ in blocks} <= {"python", "bash"}, "unknown block language"
    text = (ROOT / "README.md").read_text()
    # a marker that lost its reason (or its block) would silently stop a block being run
    assert text.count("readme-test:") == sum(reason is not None for *_, reason in blocks)


_GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def _run_block(language, code, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    # the venv running the tests provides `python` and the `quicdesign` script
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = (
        [sys.executable, "-c", code]
        if language == "python"
        else ["bash", "-euo", "pipefail", "-c", code]
    )
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.mark.slow
@pytest.mark.parametrize(
    "language, code, line, skip",
    _readme_blocks(),
    ids=[f"{language}-line{line}" for language, _, line, _ in _readme_blocks()],
)
def test_every_readme_block_runs(language, code, line, skip, tmp_path):
    if skip:
        pytest.skip(f"README line {line}: {skip}")
    result = _run_block(language, code, tmp_path)
    if result.returncode != 0 and _GLOO_TEARDOWN_ABORT in result.stderr:
        # gloo's C++ teardown occasionally aborts at exit (seen about once in ten runs of
        # the DDP block) after the block has run to its end; only a failure before then is
        # ours, so the block's output must still be complete
        print(f"README line {line}: gloo aborted during teardown after the block finished")
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stdout.rstrip().splitlines()[-1].startswith("iterations"), result.stdout
    else:
        assert result.returncode == 0, f"README line {line}:\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"README line {line} printed nothing"
    assert "HiGHS" not in result.stdout


def _readme_cli_commands():
    """Every ``quicdesign ...`` command quoted inline in README.md (placeholders filled)."""
    text = (ROOT / "README.md").read_text()
    placeholders = {"EXPERIMENT": "mcm", "DIR": "out", "A": "a", "B": "b"}
    commands = []
    for span in re.findall(r"`(quicdesign [^`|]*)`", text):
        words = [placeholders.get(word, word) for word in span.split()[1:]]
        commands.append(words)
    return commands


def test_every_cli_command_quoted_in_the_readme_parses():
    from quicdesign.fl.experiments import EXPERIMENTS

    commands = _readme_cli_commands()
    assert len(commands) >= 10
    for words in commands:
        try:
            args = build_parser(words).parse_args(words)
        except SystemExit:
            pytest.fail(
                f"README quotes a command that does not parse: quicdesign {' '.join(words)}"
            )
        if words[:2] == ["fl", "run"]:
            assert args.experiment in EXPERIMENTS, words


def test_bench_dme_skips_compressors_whose_module_is_missing(monkeypatch, capsys):
    from quicdesign import ParameterError
    from quicdesign.bench import _dme_setup, dme

    needs = {"quicfl-ec": ("no_such_module_qd", "entropy")}
    monkeypatch.setattr(_dme_setup, "_OPTIONAL_NEEDS", needs)
    rows = dme.run_dme_benchmark(
        compressors=["quicfl-ec", "eden"], bits=(2,), small=True, families=["normal"]
    )
    assert {row["compressor"] for row in rows} == {"eden"}
    assert "skipping quicfl-ec: needs no_such_module_qd" in capsys.readouterr().err
    with pytest.raises(ParameterError, match="none of the requested"):
        dme.run_dme_benchmark(compressors=["quicfl-ec"], small=True, families=["normal"])


#: Calls that return None: a notebook cell may end with one without printing an object repr.
_SILENT_CALLS = {"print", "display", "show", "savefig", "tight_layout"}


def test_notebook_cells_do_not_end_in_a_stray_expression():
    """A cell ending in ``ax.legend()`` shows ``<matplotlib.legend.Legend at 0x...>``."""
    import ast

    stray = []
    for notebook in sorted((ROOT / "notebooks").glob("*.py")):
        for cell in notebook.read_text().split("# %%")[1:]:
            if cell.startswith(" [markdown]"):
                continue
            body = ast.parse(cell.split("\n", 1)[1]).body
            last = body[-1] if body else None
            if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call):
                function = last.value.func
                name = function.attr if isinstance(function, ast.Attribute) else function.id
                if name not in _SILENT_CALLS:
                    stray.append((notebook.name, ast.unparse(last)))
            elif isinstance(last, ast.Expr) and not isinstance(last.value, ast.Constant):
                stray.append((notebook.name, ast.unparse(last)))
    assert not stray, stray


def test_tables_show_takes_an_entropy_rate_or_one_table_folder(capsys):
    entropy = quicdesign.shipped_tables_dir() / "entropy"
    assert main(["tables", "show", "2", "--path", str(entropy)]) == 0
    assert capsys.readouterr().out.startswith("Table(entropy-coded, rate=2 bits/coordinate")
    assert main(["tables", "show", "--path", str(entropy / "rate3-l6")]) == 0
    assert "rate=3 bits/coordinate" in capsys.readouterr().out.splitlines()[0]
    # a b that contradicts the folder, a missing b, and l for an entropy collection: refused
    for argv in (
        ["2", "--path", str(entropy / "rate3-l6")],
        [],
        ["2", "--path", str(entropy), "--shared-bits", "6"],
    ):
        assert main(["tables", "show", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("quicdesign: error:")
