"""optimize tune's search without exporting anything: goal parsing, the space and its order,
dominance, the speed bound and early stop, the trial store (resume, another search refused), the
Pareto front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimize.errors import InputError
from optimize.tune.frontier import markdown, pareto
from optimize.tune.goal import Goal, parse_goal
from optimize.tune.runner import estimated_seconds
from optimize.tune.space import Candidate, at_least_as_accurate, bound, build_space, decide
from optimize.tune.store import TrialStore


def record(c: Candidate, status: str = "met", speedup: float | None = None, size: int = 10_000_000, accuracy: float = 0.995, seconds: float = 60.0) -> dict:
    r = {"candidate": c.as_dict(), "key": c.key, "status": status, "figures": {"accuracy": accuracy, "cosine_mean": accuracy}, "seconds": seconds, "node": "n"}
    if status == "met":
        r.update(speedup=speedup, p50_ms=10.0 / (speedup or 1), size_bytes=size)
    return r


GOAL = Goal(cosine=0.99)


def test_goal_strings_parse_and_bad_ones_are_one_line_input_errors():
    assert parse_goal("cosine>=0.99") == Goal(cosine=0.99)
    assert parse_goal(" cosine >= 0.995 , agreement>=0.9") == Goal(cosine=0.995, agreement=0.9)
    assert parse_goal(None) == Goal(cosine=0.99)
    assert parse_goal(None, Path("rows.csv"), 0.5).is_task
    for bad in ("cosine>0.99", "cos>=0.9", "cosine>=1.5", "cosine>=", "latency<=3"):
        with pytest.raises(InputError) as caught:
            parse_goal(bad)
        assert "\n" not in str(caught.value) and "--goal" in str(caught.value)
    with pytest.raises(InputError):
        parse_goal("cosine>=0.99", Path("rows.csv"))


def test_space_order_unpruned_first_then_cuts_without_then_with_recovery():
    space = build_space(["ort-fp32", "ort-int8"], [0.0, 0.3, 0.1], [0, 400], GOAL)
    labels = [c.key for c in space]
    assert labels[:3] == ["ort-int8|prune=0|recover=0|budget=0.99", "ort-int8|prune=0|recover=0|budget=0.995", "ort-fp32|prune=0|recover=0|budget=-"]
    first_recovered = next(i for i, c in enumerate(space) if c.recover)
    assert all(c.prune > 0 and not c.recover for c in space[3:first_recovered])
    assert [c.prune for c in space[3:first_recovered]] == sorted(c.prune for c in space[3:first_recovered])
    # no recovery without a cut; a cut int8 candidate only at the tight budget
    assert not any(c.recover and not c.prune for c in space)
    assert {c.budget for c in space if c.prune and c.target == "ort-int8"} == {0.995}
    with pytest.raises(InputError):
        build_space(["trt-int8"], [0.0], [0], GOAL)
    with pytest.raises(InputError):
        build_space(["ort-fp32"], [1.5], [0], GOAL)


def test_accuracy_order_behind_dominance():
    fp32, int8 = Candidate("ort-fp32"), Candidate("ort-int8", budget=0.99)
    assert at_least_as_accurate(fp32, int8) and not at_least_as_accurate(int8, fp32)
    cut = Candidate("ort-fp32", 0.1)
    assert at_least_as_accurate(cut, Candidate("ort-fp32", 0.3))
    assert not at_least_as_accurate(Candidate("ort-fp32", 0.3), cut)
    assert at_least_as_accurate(Candidate("ort-fp32", 0.1, 400), Candidate("ort-fp32", 0.2, 0))
    assert not at_least_as_accurate(Candidate("ort-fp32", 0.1, 0), Candidate("ort-fp32", 0.2, 400))
    assert at_least_as_accurate(Candidate("ort-int8", budget=0.995), Candidate("ort-int8", budget=0.99))


def test_a_cut_that_misses_without_recovery_skips_deeper_cuts_without_recovery_only():
    space = build_space(["ort-fp32"], [0.0, 0.1, 0.2, 0.3], [0, 400], GOAL)
    done = {c.key: record(c, "missed") for c in [Candidate("ort-fp32", 0.1)]}
    verdicts = {d.candidate.key: d.verdict for d in decide(space, done, "latency")}
    assert verdicts[Candidate("ort-fp32", 0.2).key] == "dominated"
    assert verdicts[Candidate("ort-fp32", 0.3).key] == "dominated"
    assert verdicts[Candidate("ort-fp32", 0.1, 400).key] == "run"
    assert verdicts[Candidate("ort-fp32", 0.3, 400).key] == "run"
    assert verdicts[Candidate("ort-fp32").key] == "run"


def test_early_stop_when_no_candidate_can_beat_the_best():
    space = build_space(["ort-int8", "ort-fp32"], [0.0, 0.1, 0.3, 0.5], [0], GOAL)
    int8, fp32 = Candidate("ort-int8", budget=0.99), Candidate("ort-fp32")
    done = {int8.key: record(int8, speedup=4.0), fp32.key: record(fp32, speedup=2.3)}
    verdicts = {d.candidate.key: d.verdict for d in decide(space, done, "latency")}
    # a tighter int8 budget is at best as fast as the looser one that met the goal
    assert verdicts[Candidate("ort-int8", budget=0.995).key] == "cannot-beat"
    # fp32 cut by 30% is at most 1.1/0.7 x 2.3 = 3.6x < 4.0x; by 50% it could reach 5.1x
    assert verdicts[Candidate("ort-fp32", 0.3).key] == "cannot-beat"
    assert verdicts[Candidate("ort-fp32", 0.5).key] == "run"
    assert verdicts[Candidate("ort-int8", 0.1, budget=0.995).key] == "run"
    assert bound(Candidate("ort-fp32", 0.5), list(done.values()), "latency") == pytest.approx(2.3 * 1.1 / 0.5)
    # nothing known about a target: no bound, it runs
    assert bound(Candidate("ort-fp16"), list(done.values()), "latency") is None


def test_size_objective_bounds_bytes_from_below():
    fp32 = Candidate("ort-fp32")
    done = {fp32.key: record(fp32, speedup=2.0, size=80_000_000)}
    int8 = Candidate("ort-int8", budget=0.99)
    done[int8.key] = record(int8, speedup=4.0, size=20_000_000)
    verdicts = {d.candidate.key: d.verdict for d in decide(build_space(["ort-int8", "ort-fp32"], [0.0, 0.5], [0], GOAL), done, "size")}
    assert verdicts[Candidate("ort-fp32", 0.5).key] == "cannot-beat"  # at least 40 MB against 20 MB
    assert verdicts[Candidate("ort-int8", 0.5, budget=0.995).key] == "run"


def test_store_appends_resumes_and_refuses_another_search(tmp_path):
    context = {"model": "bert", "goal": "cosine>=0.99"}
    store = TrialStore(tmp_path, context)
    c = Candidate("ort-fp32")
    store.add(record(c, speedup=2.0))
    with open(tmp_path / "trials.jsonl", "a") as handle:  # a line cut by a crash mid-write
        handle.write('{"key": "ort-int8|pr')
    again = TrialStore(tmp_path, context)
    assert list(again.records) == [c.key] and c.key in again
    assert json.loads((tmp_path / "trials.jsonl").read_text().splitlines()[0])["context"] == context
    with pytest.raises(InputError) as caught:
        TrialStore(tmp_path, {**context, "goal": "cosine>=0.999"})
    assert "another search" in str(caught.value)


def test_pareto_front_and_table():
    a, b, c = Candidate("ort-int8", budget=0.99), Candidate("ort-fp32"), Candidate("ort-fp32", 0.3)
    records = [record(a, speedup=4.0, accuracy=0.991), record(b, speedup=2.0, accuracy=0.99999), record(c, speedup=1.9, accuracy=0.995), record(Candidate("ort-fp32", 0.5), "missed")]
    front = {r["key"] for r in pareto(records, "latency")}
    assert front == {a.key, b.key}
    text = markdown(records, "latency", "cosine>=0.99", [], [])
    assert "**best**: ort-int8, int8 budget 0.99" in text and text.count("| yes |") == 2


def test_time_estimates_come_from_alike_trials():
    unpruned = record(Candidate("ort-fp32"), seconds=100.0)
    cut = record(Candidate("ort-fp32", 0.1), "missed", seconds=400.0)
    assert estimated_seconds(Candidate("ort-fp32", 0.3), [unpruned]) == 300.0
    assert estimated_seconds(Candidate("ort-fp32", 0.3), [unpruned, cut]) == 400.0
    assert estimated_seconds(Candidate("ort-fp32", 0.3, 400), [unpruned, cut]) == pytest.approx(400.0 + 280.0)
    assert estimated_seconds(Candidate("ort-int8", budget=0.99), []) == 0.0
