"""The progress `normbench run` prints off a terminal: the seed of each trial and a suite ETA."""

from __future__ import annotations

import io

from normbench.suite.live import LiveView


def _record(epoch: int) -> dict:
    return {"epoch": epoch, "val_top1": 50.0, "test_top1": 49.0, "images_per_s": 100.0,
            "epoch_time_s": 2.0}  # fmt: skip


def test_plain_lines_show_the_seed_and_a_suite_eta() -> None:
    stream = io.StringIO()
    with LiveView(total=4, stream=stream) as view:
        view.start("a", "bn resnet20", epochs=3, seed=7)
        view.start("b", "gn resnet20", epochs=3, seed=8)
        view.started -= 10.0  # ten seconds into the session
        view.record("a", _record(1))
        view.record("b", _record(1))
    lines = stream.getvalue().splitlines()
    assert "start bn resnet20 seed=7 [a]" in lines[1]
    # 2 epochs in 10 s; left: 2 + 2 epochs of the running trials + 2 unstarted x 3 epochs = 10
    assert "bn resnet20 seed=7 [a] epoch 1/3" in lines[3]
    assert lines[4].endswith("suite ETA 0:50")


def test_eta_counts_unstarted_trials_at_the_mean_epochs_seen() -> None:
    view = LiveView(total=3, stream=io.StringIO())
    assert view.suite_eta_s() is None  # nothing measured yet
    view.start("a", "bn", epochs=4)
    view.start("b", "gn", epochs=2)
    view.record("a", _record(2))
    view.end("b", "completed")
    # 1 epoch per 6 s; left: 2 (a) + 1 unstarted x mean(4, 2) = 3 -> 5 epochs
    assert view.suite_eta_s(now=view.started + 6.0) == 5 * 6.0


def test_the_header_claims_finished_trials_only_when_it_knows_them() -> None:
    grid, search = io.StringIO(), io.StringIO()
    with LiveView(total=4, done=1, stream=grid):
        pass
    # A search counts its finished samples when it opens its study (a note of its own).
    with LiveView(total=6, done=None, stream=search) as view:
        view.add_done(5)
    assert grid.getvalue().splitlines()[0].endswith("4 trials, 1 already finished")
    assert search.getvalue().splitlines()[0].endswith("6 trials")
    assert view.done == 5


def test_the_header_counts_one_trial_in_the_singular() -> None:
    one = io.StringIO()
    with LiveView(total=1, done=0, stream=one):
        pass
    assert one.getvalue().splitlines()[0].endswith("1 trial, 0 already finished")
