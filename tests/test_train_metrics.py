"""train/metrics.jsonl read back (one reader for the plot, the report, the card and resume), the logging window's
record, and the stop request's signal handling: hand-computed expectations, no model."""

import json
import os
import signal

import pytest

from tunespec.runtime.stop_signal import StopRequest
from tunespec.runtime.train_metrics import StepWindow, read_metrics, truncate_metrics

LINES = [
    '{"step": 1, "loss": 2.5}',
    '{"step": 2, "loss": 2.0}',
    '{"step": 2, "eval_loss": 2.25}',
    "[1, 2]",  # JSON, not an object
    '{"loss": 1.0}',  # no step
    '{"step": "3", "loss": 1.0}',  # a step that is not an integer
    '{"step": 3, "loss": 1.5}',
    '{"step": 4, "lo',  # cut short by a kill
]


def test_read_keeps_whole_records_with_an_integer_step_and_counts_the_rest(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    log = read_metrics(path)
    assert [(r["step"], r.get("loss"), r.get("eval_loss")) for r in log.records] == [
        (1, 2.5, None), (2, 2.0, None), (2, None, 2.25), (3, 1.5, None)]
    assert log.lines == [LINES[0], LINES[1], LINES[2], LINES[6]]
    assert log.cut_lines == 4


def test_truncate_keeps_the_lines_of_steps_up_to_the_resumed_one_as_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    truncate_metrics(path, 2)
    assert path.read_text(encoding="utf-8") == "".join(line + "\n" for line in LINES[:3])
    truncate_metrics(path, 0)
    assert path.read_text(encoding="utf-8") == ""


def test_step_window_record_averages_the_loss_and_sums_the_tokens(monkeypatch):
    import tunespec.runtime.train_metrics as train_metrics

    window = StepWindow(t0=0.0)
    window.add(2.0, 100, 90, 120)
    window.add(1.0, 50, 30, 40)
    monkeypatch.setattr(train_metrics.time, "perf_counter", lambda: 4.0)  # 4 s for the two steps
    record = window.record(step=2, epoch=0.123456, lr=1e-4, grad_norm=0.12345678)
    assert record == {"step": 2, "epoch": 0.1235, "loss": 1.5, "lr": 1e-4, "grad_norm": 0.123457,
                      "trained_tokens": 150, "tokens_per_s": 30.0, "step_time_s": 2.0,
                      "padding_fraction": round(1 - 120 / 160, 4)}
    assert json.loads(json.dumps(record)) == record


def test_stop_request_sets_the_signal_ignores_a_quick_repeat_and_restores_the_handlers(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGTERM) is stop
        stop(signal.SIGTERM, None)
        assert stop.signal == signal.SIGTERM
        stop(signal.SIGTERM, None)  # the launcher passing the same stop on: ignored
        stop.at -= StopRequest.REPEAT_S + 1
        with pytest.raises(KeyboardInterrupt):  # a second stop later: give up at once
            stop(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_worker_holds_off_stop_signals_until_it_exits():
    """After the stop is saved (several processes): SIGINT/SIGTERM are ignored from then on and the block's end
    restores nothing, so torch elastic's SIGTERM to the workers still shutting down cannot end them by the signal."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with StopRequest() as stop:
            stop(signal.SIGTERM, None)
            stop.hold_until_exit()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: this process goes on
    finally:
        for s, h in before.items():
            signal.signal(s, h)
