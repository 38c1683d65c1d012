"""A host call whose required argument a script leaves out, undefined or null: rejected with 400 naming
the argument and the call (docs/script-api.md, "Arguments and rejections"), never made with a made-up
value such as the text "None". Each script runs in its own account beside the victim, whose answers
must not change, and the host's data must be untouched by the refused calls.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.usefixtures("victim")]

ACCOUNT = "forgetful"

#: (expression a script evaluates, the rejection it gets), one per required argument of every host call
CASES: list[tuple[str, str]] = [
    ("api.lookup.asrplus(undefined)", "lookup.asrplus: argument 'number' is missing (undefined or null)"),
    ("api.lookup.asrplus()", "lookup.asrplus: argument 'number' is missing (undefined or null)"),
    ("api.lookup.asrplus(null)", "lookup.asrplus: argument 'number' is missing (undefined or null)"),
    ("api.lookup.tps(undefined)", "lookup.tps: argument 'number' is missing (undefined or null)"),
    ("api.lookup.nnpc()", "lookup.nnpc: argument 'number' is missing (undefined or null)"),
    ("api.lookup.hlr(null)", "lookup.hlr: argument 'number' is missing (undefined or null)"),
    ("api.lookup.lrn(undefined)", "lookup.lrn: argument 'number' is missing (undefined or null)"),
    ("api.lookup.ping()", "lookup.ping: argument 'number' is missing (undefined or null)"),
    ("api.lookup.userspaceLookup()", "lookup.userspaceLookup: argument 'key' is missing (undefined or null)"),
    (
        "api.lookup.userspaceLookup('DNC', undefined)",
        "lookup.userspaceLookup: argument 'key' is missing (undefined or null)",
    ),
    (
        "api.lookup.userspaceLookup(undefined, '15551234567')",
        "lookup.userspaceLookup: argument 'area' is missing (undefined or null)",
    ),
    ("datastore.get(undefined)", "datastore.get: argument 'key' is missing (undefined or null)"),
    ("datastore.get()", "datastore.get: argument 'key' is missing (undefined or null)"),
    ("datastore.set(undefined, 1)", "datastore.set: argument 'key' is missing (undefined or null)"),
    ("datastore.set(undefined)", "datastore.set: argument 'key' is missing (undefined or null)"),
    ("datastore.set('k')", "datastore.set: argument 'value' is missing"),
    ("datastore.set('k', undefined, 60)", "datastore.set: argument 'value' is missing"),
    ("datastore.incr(null)", "datastore.incr: argument 'key' is missing (undefined or null)"),
    ("datastore.incr('n', null)", "datastore.incr: argument 'by' must be a finite number, not null"),
    ("datastore.delete()", "datastore.delete: argument 'key' is missing (undefined or null)"),
    ("require('cxKV').kv.get(undefined)", "datastore.get: argument 'key' is missing (undefined or null)"),
    ("require('cxKV').ko.set('k')", "datastore.set: argument 'value' is missing"),
    ("require('cxKV').incr()", "datastore.incr: argument 'key' is missing (undefined or null)"),
    ("require('cxUserspace').create('L', 'k')", "userspace.create: argument 'value' is missing"),
    (
        "require('cxUserspace').create(undefined, 'k')",
        "userspace.create: argument 'area' is missing (undefined or null)",
    ),
    (
        "require('cxUserspace').create('L', null, 1)",
        "userspace.create: argument 'key' is missing (undefined or null)",
    ),
    ("require('cxUserspace').read('L')", "userspace.read: argument 'key' is missing (undefined or null)"),
    ("require('cxUserspace').read()", "userspace.read: argument 'area' is missing (undefined or null)"),
    ("require('cxUserspace').update('L', 'k', undefined)", "userspace.update: argument 'value' is missing"),
    (
        "require('cxUserspace').update(null, 'k', 1)",
        "userspace.update: argument 'area' is missing (undefined or null)",
    ),
    ("require('cxUserspace').delete('L')", "userspace.delete: argument 'key' is missing (undefined or null)"),
]

CATCHING = """
async function main() {
  try { return ['made', await (%s)]; } catch (e) { return ['rejected', e]; }
}
"""


@pytest.fixture
def forgetful(pool: Any) -> Any:
    from sbxutil import PoolRunner

    return PoolRunner(pool, default_name="forgetful-script", account=ACCOUNT)


@pytest.mark.parametrize(("expression", "message"), CASES, ids=[c[0] for c in CASES])
async def test_missing_argument_is_rejected_400_naming_argument_and_call(
    forgetful: Any, host: Any, expression: str, message: str
) -> None:
    out = await forgetful(CATCHING % expression, {})
    assert out.status == "ok", out.to_json()
    assert out.response == ["rejected", [400, message]]
    # nothing was written under a stand-in key or value
    assert host.datastore.get((ACCOUNT, "forgetful-script"), {}) == {}
    assert host.userspace.get((ACCOUNT, "L"), {}) == {}


async def test_uncaught_missing_argument_fails_the_run_with_400(forgetful: Any) -> None:
    out = await forgetful("async function main() { return await api.lookup.asrplus(undefined); }", {})
    assert out.status == "error", out.to_json()
    assert out.code == 400
    assert out.message == "lookup.asrplus: argument 'number' is missing (undefined or null)"


async def test_null_stays_a_value_a_script_can_store(forgetful: Any) -> None:
    source = """
    async function main() {
      await datastore.set('nothing', null);
      const cx = require('cxUserspace');
      const created = await cx.create('N', 'k', null);
      return [await datastore.get('nothing'), created, await cx.read('N', 'k')];
    }
    """
    out = await forgetful(source, {}, name="forgetful-null")
    assert out.status == "ok", out.to_json()
    assert out.response == [None, {"key": "k", "value": None}, {"key": "k", "value": None}]


async def test_cxkv_kv_and_ko_are_one_store(forgetful: Any) -> None:
    source = """
    async function main() {
      const cx = require('cxKV');
      await cx.kv.set('shared', {n: 1});
      return [cx.kv === cx.ko, await cx.ko.get('shared')];
    }
    """
    out = await forgetful(source, {}, name="forgetful-kv")
    assert out.status == "ok", out.to_json()
    assert out.response == [True, {"n": 1}]
