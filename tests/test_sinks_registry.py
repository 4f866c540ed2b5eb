"""The sink registry: a sink is a spec (config keys, build, reload, status); listen knows nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from kwspot import sinks as registry
from kwspot.config import DEFAULTS, validate
from kwspot.listen import Listener, ListenRequest
from kwspot.sinks import SinkContext, SinkSpec, Status, build_sinks, reconcile


class Probe:
    """A sink that keeps what it is given."""

    def __init__(self, tag: str = "") -> None:
        self.tag, self.events, self.statuses, self.closed = tag, [], [], False

    def emit(self, event) -> None:
        self.events.append(event)

    def status(self, status: Status) -> None:
        self.statuses.append(status)

    def close(self) -> None:
        self.closed = True


def probe_spec(wants_status: bool = True, reloadable: bool = True) -> SinkSpec:
    return SinkSpec("probe", {"jsonl": (False, None)}, lambda cfg, ctx: Probe(str(cfg["jsonl"])),
                    reloadable=reloadable, wants_status=wants_status)


def test_every_registered_sink_declares_its_config_keys_with_defaults():
    keys = [key for spec in registry.sink_specs() for key in spec.keys]
    assert sorted(keys) == sorted(DEFAULTS["sinks"])
    assert len(keys) == len(set(keys))
    assert [spec.name for spec in registry.sink_specs()] == ["console", "jsonl", "socket", "mqtt", "actions"]


def test_a_registered_sink_is_built_fed_events_and_status_and_closed(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "sink_specs", lambda: (probe_spec(),))
    rng = np.random.default_rng(0)
    wav = tmp_path / "noise.wav"
    soundfile.write(wav, rng.normal(0, 0.1, 8000 * 3).astype(np.float32), 8000)
    listener = Listener(ListenRequest(input=str(wav), fast=True), validate(None))
    probe = listener.sinks["probe"]
    assert listener.run() == 0
    assert probe.closed and len(probe.statuses) >= 20  # one per block of audio
    levels = [s.level_db for s in probe.statuses]
    assert -30 < float(np.median(levels)) < -10  # white noise at 0.1 RMS is -20 dBFS
    assert all(s.top_label in listener.model.labels and 0 <= s.top_score <= 1 for s in probe.statuses)


def test_status_goes_only_to_sinks_that_want_it(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "sink_specs", lambda: (probe_spec(wants_status=False),))
    wav = tmp_path / "quiet.wav"
    soundfile.write(wav, np.zeros(8000, np.float32), 8000)
    listener = Listener(ListenRequest(input=str(wav), fast=True), validate(None))
    probe = listener.sinks["probe"]
    listener.run()
    assert probe.statuses == []


@pytest.mark.parametrize("reloadable", [True, False])
def test_reload_rebuilds_a_sink_whose_keys_changed_unless_it_is_not_reloadable(monkeypatch, reloadable):
    monkeypatch.setattr(registry, "sink_specs", lambda: (probe_spec(reloadable=reloadable),))
    old = {"jsonl": False}
    running = build_sinks(old, SinkContext("test", tty=False))
    kept = reconcile(running, old, dict(old), SinkContext("test", tty=False))
    assert kept["probe"] is running["probe"]
    changed = reconcile(running, old, {"jsonl": True}, SinkContext("test", tty=False))
    if reloadable:
        assert changed["probe"].tag == "True" and running["probe"].closed
    else:
        assert changed["probe"] is running["probe"] and not running["probe"].closed


def test_a_reload_that_would_leave_no_sink_is_refused_and_the_running_one_kept(monkeypatch):
    from kwspot.errors import KwspotError

    monkeypatch.setattr(registry, "sink_specs", lambda: (
        SinkSpec("probe", {"jsonl": (False, None)}, lambda cfg, ctx: Probe() if cfg["jsonl"] else None),))
    ctx = SinkContext("test", tty=False)
    running = build_sinks({"jsonl": True}, ctx)
    with pytest.raises(KwspotError, match="no sink"):
        reconcile(running, {"jsonl": True}, {"jsonl": False}, ctx, refuse_none="no sink left")
    assert not running["probe"].closed
    assert reconcile(running, {"jsonl": True}, {"jsonl": False}, ctx) == {} and running["probe"].closed
