"""``optimize tune``: the fastest artifact that meets the user's goal, searched on Ray.

space.py (candidates, order, dominance, bounds) -> trials.py (export, gate, time one candidate)
-> store.py (DIR/trials.jsonl, resume) -> frontier.py (frontier.md/png) -> runner.py (Ray, DIR/best)."""

from optimize.tune.goal import Goal, parse_goal
from optimize.tune.runner import ClusterConfig, TuneConfig, TuneResult, tune
from optimize.tune.trials import TimingConfig

__all__ = ["ClusterConfig", "Goal", "TimingConfig", "TuneConfig", "TuneResult", "parse_goal", "tune"]
