"""The demo's learner stages run side by side: at most --jobs at a time, longest first, threads split,
the first failure stops the rest and names the stage and its log."""
import argparse
import json
import sys
import time

import pytest

from jest_ds import demo


def _stage(tmp_path, name, cost=1.0, sleep=0.3, exit_code=0):
    """A stand-in for `jest-ds train`: records when it ran and the threads it was given."""
    rec = tmp_path / "rec"
    rec.mkdir(exist_ok=True)
    code = (f"import json, os, sys, time; t0 = time.time(); time.sleep({sleep}); "
            f"open({str(rec / (name + '.json'))!r}, 'w').write(json.dumps({{'start': t0, 'end': time.time(), "
            f"'omp': os.environ.get('OMP_NUM_THREADS')}})); print('stage {name} says hi'); sys.exit({exit_code})")
    return demo.Stage(tmp_path / "runs" / name, [sys.executable, "-c", code], cost)


def _records(tmp_path):
    return {p.stem: json.loads(p.read_text()) for p in (tmp_path / "rec").glob("*.json")}


def test_stages_run_jobs_at_a_time_longest_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    stages = [_stage(tmp_path, "iid"), _stage(tmp_path, "curated"), _stage(tmp_path, "jest", cost=3.7, sleep=3.0),
              _stage(tmp_path, "flexi", cost=1.4)]
    demo._run_stages(stages, jobs=2, log_dir=tmp_path / "logs")
    rec = _records(tmp_path)
    assert set(rec) == {"iid", "curated", "jest", "flexi"}
    assert {r["omp"] for r in rec.values()} == {"2"}  # 4 threads shared by 2 jobs
    # never more than two alive at once (each record lies inside its process's lifetime)
    events = sorted([(r["start"], 1) for r in rec.values()] + [(r["end"], -1) for r in rec.values()])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak <= 2
    assert rec["flexi"]["start"] < rec["jest"]["end"]  # the two longest ran side by side
    # launched longest first, the cheap ones in the order asked for (the launch lines, not child timing)
    launched = [line.split("rec/")[1].split(".json")[0] for line in capsys.readouterr().out.splitlines()
                if line.startswith("+ ")]
    assert set(launched[:2]) == {"jest", "flexi"} and launched[2:] == ["iid", "curated"]
    assert "stage jest says hi" in (tmp_path / "logs/jest.log").read_text()


def test_first_failure_stops_the_rest_and_names_the_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    stages = [_stage(tmp_path, "slow", cost=5, sleep=30), _stage(tmp_path, "bad", cost=4, sleep=0.2, exit_code=3),
              _stage(tmp_path, "never", cost=1)]
    t0 = time.time()
    with pytest.raises(SystemExit) as exc:
        demo._run_stages(stages, jobs=2, log_dir=tmp_path / "logs")
    assert time.time() - t0 < 20  # the slow stage was stopped, not waited for
    msg = str(exc.value)
    assert "stage bad failed (exit 3)" in msg and str(tmp_path / "logs/bad.log") in msg
    assert "stage bad says hi" in capsys.readouterr().err  # the log's tail is shown
    assert set(_records(tmp_path)) == {"bad"}  # the pending stage never started, the slow one never finished


def test_one_job_runs_in_the_foreground(tmp_path):
    stages = [_stage(tmp_path, "a"), _stage(tmp_path, "b")]
    demo._run_stages(stages, jobs=1, log_dir=tmp_path / "logs")
    rec = _records(tmp_path)
    assert rec["a"]["end"] <= rec["b"]["start"] and not (tmp_path / "logs").exists()


def test_default_jobs(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    ns = lambda **kw: argparse.Namespace(**{"jobs": None, "scale": "cpu", **kw})  # noqa: E731
    assert demo._jobs(ns(), 4) == 2
    assert demo._jobs(ns(), 1) == 1
    assert demo._jobs(ns(scale="gpu"), 4) == 1
    assert demo._jobs(ns(jobs=3), 4) == 3
    with pytest.raises(SystemExit, match="--jobs 0"):
        demo._jobs(ns(jobs=0), 4)
