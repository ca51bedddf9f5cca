"""fluojax.progress: plain progress lines when stderr is not a terminal (logs), with a fake clock."""

import io

from fluojax.progress import progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_lines_at_most_every_interval_and_one_at_the_end():
    clock, out = FakeClock(), io.StringIO()
    with progress(64, "correlate", "bands", stream=out, clock=clock) as bar:
        for _k in range(64):
            clock.now += 0.5  # one band per 0.5 s: 32 s in all
            bar.update(1)
    lines = out.getvalue().splitlines()
    # lines at 10, 20 and 30 s (bands 20, 40, 60) and the final one at 32 s
    assert lines == [
        "fluojax: correlate 20/64 bands (31 %), 10 s elapsed, ~22 s left",
        "fluojax: correlate 40/64 bands (62 %), 20 s elapsed, ~12 s left",
        "fluojax: correlate 60/64 bands (94 %), 30 s elapsed, ~2 s left",
        "fluojax: correlate 64/64 bands (100 %), 32 s elapsed",
    ]


def test_work_shorter_than_the_interval_writes_nothing():
    clock, out = FakeClock(), io.StringIO()
    with progress(3, "frap fit", "stages", stream=out, clock=clock) as bar:
        for _ in range(3):
            clock.now += 3.0  # 9 s in all, below the 10 s interval
            bar.update(1)
    assert out.getvalue() == ""


def test_disabled_writes_nothing_even_for_long_work():
    clock, out = FakeClock(), io.StringIO()
    with progress(2, "fit", "px", enabled=False, stream=out, clock=clock) as bar:
        clock.now += 60.0
        bar.update(2)
    assert out.getvalue() == ""


def test_resumed_count_postfix_and_time_left_from_the_rate_since_the_start():
    clock, out = FakeClock(), io.StringIO()
    with progress(100, "train", "steps", start=50, stream=out, clock=clock) as bar:
        clock.now += 12.0
        bar.set_postfix(loss="0.25")
        bar.update(10)  # 10 steps in 12 s since the resume: 40 steps left ~ 48 s
    assert out.getvalue().splitlines()[0] == "fluojax: train 60/100 steps (60 %), 12 s elapsed, ~48 s left, loss=0.25"


def test_no_final_line_when_the_work_fails():
    clock, out = FakeClock(), io.StringIO()
    try:
        with progress(4, "fit", "px", stream=out, clock=clock) as bar:
            clock.now += 11.0
            bar.update(1)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert out.getvalue().splitlines() == ["fluojax: fit 1/4 px (25 %), 11 s elapsed, ~33 s left"]


def test_a_terminal_gets_a_tqdm_bar_not_lines():
    out = Tty()
    with progress(5, "fit", "px", stream=out) as bar:
        bar.update(5)
    text = out.getvalue()
    assert "5/5" in text and "\r" in text and "fluojax:" not in text  # tqdm redraws with carriage returns


def test_stages_of_unequal_cost_name_the_next_stage_and_give_no_time_estimate():
    clock, out = FakeClock(), io.StringIO()
    with progress(3, "frap fit", "stages", eta=False, stream=out, clock=clock) as bar:
        clock.now += 12.0
        bar.set_postfix_str("table built; fitting 30 starts")
        bar.update(1)
    assert (
        out.getvalue().splitlines()[0]
        == "fluojax: frap fit 1/3 stages (33 %), 12 s elapsed, table built; fitting 30 starts"
    )


def test_the_final_count_is_not_repeated_when_the_last_update_already_wrote_it():
    clock, out = FakeClock(), io.StringIO()
    with progress(4, "correlate", "bands", stream=out, clock=clock) as bar:
        clock.now += 11.0
        bar.update(3)
        clock.now += 11.0
        bar.update(1)
    assert out.getvalue().splitlines() == [
        "fluojax: correlate 3/4 bands (75 %), 11 s elapsed, ~4 s left",
        "fluojax: correlate 4/4 bands (100 %), 22 s elapsed",
    ]


def test_work_done_in_one_step_writes_nothing_however_long_it_took():
    # one band behind a 27 s first compilation: no progress to report, and a refusal that follows
    # stays the only line on stderr
    clock, out = FakeClock(), io.StringIO()
    with progress(1, "correlate", "bands", stream=out, clock=clock) as bar:
        clock.now += 27.0
        bar.update(1)
    assert out.getvalue() == ""
