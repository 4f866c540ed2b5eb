import json
import re

from kwspot.events import Event


def test_event_json_line_has_the_documented_fields():
    line = Event("stop", 0.93456, 12.34567).to_json()
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["keyword"] == "stop"
    assert obj["score"] == 0.9346
    assert obj["t"] == 12.346
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["time"])


def test_events_name_the_model_that_heard_them():
    assert json.loads(Event("go", 0.9, 1.0, model="kitchen").to_json())["model"] == "kitchen"
    assert list(json.loads(Event("go", 0.9, 1.0).to_json())) == ["keyword", "score", "t", "time", "model"]
