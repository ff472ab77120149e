"""tunespec.progress: the time left at the pace so far, on a bar or in a line now and then."""

from tunespec.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_duration_reads_like_a_person_writes_it():
    assert [duration(s) for s in (0, 44.6, 60, 186, 3599, 3720)] == [
        "0 s", "45 s", "1 min 00 s", "3 min 06 s", "59 min 59 s", "1 h 02 min"]


def test_lines_every_so_often_with_the_time_left_at_the_mean_pace():
    clock, said = Clock(), []
    p = Progress("training", total=20, unit="step", log=said.append, every=30.0, tty=False, clock=clock)
    assert p.left() is None and "left" not in p.describe()  # nothing done: no pace yet
    for _ in range(5):
        clock.t += 10.0
        p.advance()
    # a line at 30 s (3 steps) and none before; the second 30 s have not passed at step 5
    assert said == ["  training: 3/20 steps, 30 s, about 2 min 50 s left"]
    assert p.left() == 150.0  # 10 s a step, 15 steps left
    for _ in range(15):
        clock.t += 10.0
        p.advance()
    assert [line.split(",")[0] for line in said] == [f"  training: {n}/20 steps" for n in (3, 6, 9, 12, 15, 18)]
    assert p.left() == 0.0  # and no line for the last step: the caller says it is done
    p.close()


def test_a_bound_says_at_most_and_a_resumed_run_paces_only_what_it_did():
    clock, said = Clock(), []
    p = Progress("generating", total=192, unit="token step", log=said.append, initial=96, upper=True,
                 every=0.0, tty=False, clock=clock)
    clock.t += 4.0
    p.advance(8)  # 8 steps in 4 s; 88 left
    assert said == ["  generating: 104/192 token steps, 4 s, at most 44 s left"]
    p.advance(500)
    assert p.done == 192  # never past the total


def test_on_a_terminal_it_draws_a_bar_and_writes_lines_through_it(capsys):
    said = []
    p = Progress("training", total=3, unit="step", log=said.append, tty=True)
    p.advance()
    p.write("step 1/3: loss 2.0")
    p.close()
    err = capsys.readouterr().err
    assert "step 1/3: loss 2.0" in err and "training" in err and said == []
