"""The report's table: cells worse than the trivial predictor marked, skipped stages listed."""

from mmsent.pipeline.report import WORSE_MARK, write_report

TRIVIAL = {"baseline/MAE": 1.0, "baseline/Corr": 0.0, "baseline/Non0_acc_2": 0.6, "baseline/Non0_F1_score": 0.45,
           "baseline/Has0_acc_2": 0.55, "baseline/Mult_acc_7": 0.2}


def stage(test: dict, val_mae: float) -> dict:
    return {"status": "done", "wall_time_s": 1.0,
            "metrics": {"val": {"MAE": val_mae, "baseline/MAE": 1.1}, "test": {**test, **TRIVIAL}}}


def table_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_cells_worse_than_the_trivial_predictor_are_marked_with_a_note(tmp_path, capsys):
    manifest = {"pipeline": "demo", "stages": {
        # Worse on MAE (higher), Corr (negative) and Non0_acc_2; the same Has0_acc_2 is not worse.
        "text": stage({"MAE": 1.2, "Corr": -0.1, "Non0_acc_2": 0.5, "Non0_F1_score": 0.5, "Has0_acc_2": 0.55,
                       "Mult_acc_7": 0.3}, val_mae=1.2),
        "audio": stage({"MAE": 0.8, "Corr": 0.4, "Non0_acc_2": 0.7, "Non0_F1_score": 0.7, "Has0_acc_2": 0.7,
                        "Mult_acc_7": 0.3}, val_mae=0.9),
    }}
    write_report(manifest, tmp_path)
    report = (tmp_path / "report.md").read_text()
    rows = table_rows(report)
    # Columns: test MAE, Corr, Non0_acc_2, Non0_F1_score, Has0_acc_2, Mult_acc_7, val MAE, ...
    assert rows["text"][:7] == [f"1.200 {WORSE_MARK}", f"-0.100 {WORSE_MARK}", f"50.0 {WORSE_MARK}", "50.0",
                                "55.0", "30.0", f"1.200 {WORSE_MARK}"]
    assert not any(WORSE_MARK in cell for cell in rows["audio"])
    assert not any(WORSE_MARK in cell for cell in rows["*trivial predictor*"])
    note = [line for line in report.splitlines() if line.startswith(WORSE_MARK)]
    assert len(note) == 1 and "worse than the trivial predictor" in note[0]
    lines = report.splitlines()
    assert lines.index(note[0]) == lines.index(next(line for line in lines if "*trivial predictor*" in line)) + 2
    printed = capsys.readouterr().out
    assert f"| text | 1.200 {WORSE_MARK} |" in printed and note[0] in printed


def test_no_note_when_every_stage_beats_the_trivial_predictor(tmp_path):
    manifest = {"pipeline": "demo", "stages": {"audio": stage(
        {"MAE": 0.8, "Corr": 0.4, "Non0_acc_2": 0.7, "Non0_F1_score": 0.7, "Has0_acc_2": 0.7, "Mult_acc_7": 0.3},
        val_mae=0.9)}}
    write_report(manifest, tmp_path)
    assert WORSE_MARK not in (tmp_path / "report.md").read_text()


def test_skipped_stages_are_listed_with_their_reason(tmp_path):
    manifest = {"pipeline": "demo", "stages": {
        "text": {"status": "skipped", "reason": "no clip of its data has text"},
        "audio": stage({"MAE": 0.8, "Corr": 0.4}, val_mae=0.9)}}
    report = write_report(manifest, tmp_path)
    assert report["skipped"] == {"text": "no clip of its data has text"}
    assert [row["stage"] for row in report["stages"]] == ["audio"]
    assert "- text: no clip of its data has text" in (tmp_path / "report.md").read_text()
