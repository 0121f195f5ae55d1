"""Argo CD health-check verdicts on sample statuses (run by scripts/test.sh).

Argo CD runs health checks in gopher-lua (Lua 5.1); lupa's Lua runtime executes the same
script with `obj` bound to the resource, as Argo CD does.
"""
import glob
import os

import lupa
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def to_lua(lua, value):
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def verdict(obj):
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    with open(os.path.join(HERE, "health.lua")) as f:
        script = f.read()
    fn = lua.eval("function(obj) " + script + " end")
    hs = fn(to_lua(lua, obj))
    return hs["status"], hs["message"]


def test_verdicts():
    cases = sorted(glob.glob(os.path.join(HERE, "testdata", "*.yaml")))
    assert len(cases) >= 7
    for path in cases:
        with open(path) as f:
            text = f.read()
        expected = text.splitlines()[0].removeprefix("# expect: ").strip()
        status, message = verdict(yaml.safe_load(text))
        assert status == expected, f"{path}: {status} ({message}), expected {expected}"
        assert message, f"{path}: no message"


def test_messages_carry_the_reason():
    with open(os.path.join(HERE, "testdata", "stalled.yaml")) as f:
        _, message = verdict(yaml.safe_load(f))
    assert "apiKeySecretRef" in message


def test_a_rolling_endpoint_is_not_healthy_yet():
    with open(os.path.join(HERE, "testdata", "serving-rollout.yaml")) as f:
        status, message = verdict(yaml.safe_load(f))
    assert status == "Progressing"
    assert "not serving yet" in message
