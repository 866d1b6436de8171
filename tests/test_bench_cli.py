"""`cutem bench` writes its table where the user runs it, never over the recorded results."""
import csv
from pathlib import Path

from click.testing import CliRunner

from cli.bench import bench

RECORDED = Path(__file__).resolve().parents[1] / "validation" / "results" / "bench.csv"


def test_bench_writes_to_the_working_directory_and_leaves_recorded_results(tmp_path, monkeypatch):
    before = RECORDED.read_bytes() if RECORDED.exists() else None
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(bench, ["--cases", "tmv1_512_projection", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "cutem_bench.csv")))
    assert [row["case"] for row in rows] == ["tmv1_512_projection"]
    assert int(rows[0]["atoms"]) == 62671 and float(rows[0]["peak_GB"]) > 0
    assert (tmp_path / "cutem_bench.txt").is_file()
    assert (RECORDED.read_bytes() if RECORDED.exists() else None) == before


def test_bench_grad_writes_the_ratio_table_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(bench, ["--grad", "--cases", "tmv1_64_projection", "--repeats", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "cutem_bench_grad.csv")))
    assert [row["case"] for row in rows] == ["tmv1_64_projection"]
    for k in ("defocus", "mtf", "positions", "b_factors"):
        # a loss and its gradient cost at least a fraction of a forward, and not a hundred
        assert 0.1 < float(rows[0][f"{k}_median"]) < 100, (k, rows[0])
    assert "value_and_grad_image" in (tmp_path / "cutem_bench_grad.txt").read_text()


def test_option_sets_name_their_options():
    from validation.bench import case_toml, parse_case

    assert parse_case("tmv30_4096_projection_still")[3] == {"ice", "efilter", "damage", "tilt60"}
    assert parse_case("tmv30_4096_projection_all")[3] == {"ice", "efilter", "damage", "tilt60", "frames10"}
    toml = case_toml("tmv1_64_projection_still")
    assert "frames" not in toml and "damage = true" in toml and "[60.0]" in toml
