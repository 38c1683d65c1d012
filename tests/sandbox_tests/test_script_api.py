"""Every behaviour of the script API (docs/script-api.md), one small test each, with exact expected values."""

from __future__ import annotations

import copy
import datetime as dt
import json
import time

import pytest
from sbxutil import DNC, ROUTING_VARS

from sandbox import Reason, ScriptType, check_syntax

pytestmark = pytest.mark.asyncio(loop_scope="session")


def ok(out, response=None):  # type: ignore[no-untyped-def]
    assert out.status == "ok", out.to_json()
    assert out.reason is None
    return out.response


def failed(out, reason: Reason, code: int | None = None, message: str | None = None):  # type: ignore[no-untyped-def]
    assert out.status == "error", out.to_json()
    assert out.reason == reason, out.to_json()
    if code is not None:
        assert out.code == code, out.to_json()
    if message is not None:
        assert out.message == message, out.to_json()
    return out


# ---------------------------------------------------------------- entry points and completion


async def test_main_returns_value(run):
    out = await run("function main(data) { return {x: data.a + 1}; }", {"a": 1})
    assert ok(out) == {"x": 2}


async def test_main_returns_promise(run):
    out = await run("function main(data) { return Promise.resolve(data.a * 2); }", {"a": 21})
    assert ok(out) == 42


async def test_async_main(run):
    src = (
        "async function main(data) { await null; const v = await Promise.resolve(data.a); "
        "return [v, 'done']; }"
    )
    assert ok(await run(src, {"a": 3})) == [3, "done"]


async def test_response_returned_unchanged(run):
    out = await run("function main(data) { return data; }")
    assert ok(out) == ROUTING_VARS


async def test_routing_vars_shape_and_route_variables_at_top_level(run):
    src = """function main(data) {
      return [data.routing.dest_number, data.routing.cli, data.routing.account_id, data.routing.server,
              data.routing.egress_routing.length, data.route_var];
    }"""
    assert ok(await run(src)) == ["15551234567", "15557654321", 42, "sip1.example.net", 2, "v1"]


async def test_script_may_return_only_routing_object(run):
    src = "function main(data) { data.routing.dest_number = '1999'; return data.routing; }"
    expected = copy.deepcopy(ROUTING_VARS["routing"])
    expected["dest_number"] = "1999"
    assert ok(await run(src)) == expected


async def test_main_returning_falsy_non_undefined_value_completes(run):
    assert ok(await run("function main() { return 0; }")) == 0
    assert ok(await run("function main() { return false; }")) is False
    assert ok(await run("function main() { return ''; }")) == ""
    assert ok(await run("function main() { return null; }")) is None


async def test_legacy_vars_and_exit(run):
    src = (
        "function main() { var data = vars(); "
        "data.routing.dest_number = '44' + data.routing.dest_number; exit(data); }"
    )
    expected = copy.deepcopy(ROUTING_VARS)
    expected["routing"]["dest_number"] = "4415551234567"
    assert ok(await run(src)) == expected


async def test_legacy_vars_routing_as_object(run):
    src = "function main() { exit([vars.routing.dest_number, vars.routing.cli]); }"
    assert ok(await run(src)) == ["15551234567", "15557654321"]


async def test_legacy_err(run):
    failed(await run("function main() { err([404, 'Not Found']); }"), Reason.SCRIPT, 404, "Not Found")


async def test_exit_from_a_later_promise_job(run):
    src = (
        "function main() { Promise.resolve().then(function () { return 1; }).then(function (v) { "
        "exit(v + 1); }); }"
    )
    assert ok(await run(src)) == 2


async def test_undefined_main_waits_for_exit_after_host_call(run):
    src = """function main() {
      api.lookup.userspaceLookup('DNC', '15551234567').then(function (v) { exit({found: v}); });
    }"""
    assert ok(await run(src)) == {"found": "blocked"}


async def test_undefined_main_waits_for_err_after_host_call(run):
    src = """function main() {
      api.lookup.userspaceLookup('DNC', '15551234567').then(function () { err([603, 'Denied (DNC)']); });
    }"""
    failed(await run(src), Reason.SCRIPT, 603, "Denied (DNC)")


async def test_undefined_main_with_nothing_pending_completes_with_null(run):
    out = await run("function main(data) { var x = data.a; }", {"a": 1})
    assert ok(out) is None
    assert out.to_json()["response"] is None


async def test_undefined_legacy_main_with_nothing_pending_completes_with_null(run):
    assert ok(await run("function main() { var data = vars(); }")) is None


async def test_exit_wins_over_returned_value(run):
    assert ok(await run("function main() { exit(1); return 2; }")) == 1


async def test_exit_wins_over_later_throw(run):
    assert ok(await run("function main() { exit('first'); throw new Error('486 Busy Here'); }")) == "first"


async def test_err_wins_over_later_exit(run):
    failed(
        await run("function main() { err([404, 'Not Found']); exit(1); }"), Reason.SCRIPT, 404, "Not Found"
    )


async def test_second_exit_ignored(run):
    assert ok(await run("function main() { exit(1); exit(2); }")) == 1


async def test_exit_before_returned_promise_settles(run):
    src = "async function main() { exit('early'); await null; return 'late'; }"
    assert ok(await run(src)) == "early"


async def test_returned_promise_settling_before_exit_wins(run):
    src = """async function main() {
      datastore.get('nothing').then(function () { exit('late'); });
      return 'settled';
    }"""
    out = await run(src)
    assert ok(out) == "settled"


async def test_send_after_exit_is_not_delivered(run):
    src = "function main() { exit('done'); api.send.sms({to: '15550001111', text: 'late'}); }"
    out = await run(src)
    assert ok(out) == "done"
    assert out.outbound == []
    assert "outbound" not in out.to_json()


async def test_queued_job_after_exit_does_not_run(run):
    src = """function main() {
      Promise.resolve().then(function () { api.send.email({to: 'a@example.com', subject: 'late'}); });
      exit('done');
    }"""
    out = await run(src)
    assert ok(out) == "done"
    assert out.outbound == []


async def test_datastore_write_after_exit_has_no_effect(run):
    src = """async function main(data) {
      if (data.op === 'write') { exit('written?'); datastore.set('late', 'yes'); return; }
      const v = await datastore.get('late');
      return v === undefined || v === null ? 'absent' : v;
    }"""
    assert ok(await run(src, {"op": "write"}, name="late-writer")) == "written?"
    assert ok(await run(src, {"op": "read"}, name="late-writer")) == "absent"


# ---------------------------------------------------------------- drivers

DRIVER = """
module.exports = {
  route: function (data) { return {fn: 'route', dest: data.routing.dest_number}; },
  other: async function (data) { await null; return {fn: 'other', a: data.a}; },
  reject: function () { throw new Error('403 Forbidden'); },
};
"""


async def test_driver_function_chosen_by_name(run):
    out = await run(DRIVER, type=ScriptType.DRIVER, function="route")
    assert ok(out) == {"fn": "route", "dest": "15551234567"}


async def test_driver_other_async_function(run):
    out = await run(DRIVER, {"a": 5}, type=ScriptType.DRIVER, function="other")
    assert ok(out) == {"fn": "other", "a": 5}


async def test_driver_function_sip_error(run):
    out = await run(DRIVER, type=ScriptType.DRIVER, function="reject")
    failed(out, Reason.SCRIPT, 403, "Forbidden")


async def test_driver_misspelt_module_export(run):
    src = "module.export = { hello: function (data) { return 'hi ' + data.who; } };"
    assert ok(await run(src, {"who": "bob"}, type=ScriptType.DRIVER, function="hello")) == "hi bob"


async def test_driver_unknown_function_is_not_found(run):
    out = await run(DRIVER, type=ScriptType.DRIVER, function="nosuchfn")
    failed(out, Reason.NOT_FOUND)
    assert "nosuchfn" in out.message


async def test_driver_has_host_api(run):
    src = "module.exports = {t: function () { return [typeof api, typeof datastore, typeof require]; }};"
    assert ok(await run(src, type=ScriptType.DRIVER, function="t")) == ["object", "object", "function"]


async def test_app_without_main_is_not_found(run):
    failed(await run("var x = 1;"), Reason.NOT_FOUND)


@pytest.mark.parametrize("declaration", ["const", "let"])
async def test_main_declared_with_const_or_let_is_found(run, declaration):
    src = f"{declaration} main = async (data) => ({{n: data.n}});"
    assert ok(await run(src, {"n": 4}, name=f"lexical-{declaration}")) == {"n": 4}


async def test_a_function_name_that_is_not_an_identifier_is_never_evaluated(run):
    src = "var hits = 0; function main() { return hits; }"
    out = await run(src, {}, function="main; hits++; while (true) {}", timeout_ms=500)
    failed(out, Reason.NOT_FOUND)
    assert run.last_ms < 400


# ---------------------------------------------------------------- SIP-style errors


async def test_throw_error_with_sip_code(run):
    failed(
        await run("function main() { throw new Error('404 Not Found'); }"), Reason.SCRIPT, 404, "Not Found"
    )


async def test_throw_error_message_is_whole_remaining_text(run):
    src = "function main() { throw new Error('480 Disallowed by Date/Time Restriction'); }"
    failed(await run(src), Reason.SCRIPT, 480, "Disallowed by Date/Time Restriction")


async def test_async_throw_sip(run):
    src = "async function main() { await null; throw new Error('486 Busy Here'); }"
    failed(await run(src), Reason.SCRIPT, 486, "Busy Here")


async def test_throw_sip_string(run):
    failed(await run("function main() { throw '404 Not Found'; }"), Reason.SCRIPT, 404, "Not Found")


async def test_reject_with_array(run):
    src = "function main() { return Promise.reject([603, 'Denied (DNC)']); }"
    failed(await run(src), Reason.SCRIPT, 603, "Denied (DNC)")


async def test_throw_array(run):
    failed(await run("function main() { throw [603, 'Denied (DNC)']; }"), Reason.SCRIPT, 603, "Denied (DNC)")


async def test_err_in_app_main(run):
    failed(await run("function main(data) { err([404, 'Not Found']); }"), Reason.SCRIPT, 404, "Not Found")


async def test_type_error_is_runtime_500_with_readable_message(run):
    out = await run("function main(data) { return data.nothing.deeper; }")
    failed(out, Reason.RUNTIME, 500)
    assert out.message and "[object" not in out.message
    assert "deeper" in out.message or "undefined" in out.message, out.message


async def test_thrown_type_error_message(run):
    out = await run("function main() { throw new TypeError('bad thing'); }")
    failed(out, Reason.RUNTIME, 500)
    assert "bad thing" in out.message


async def test_throw_plain_string_is_runtime_500(run):
    failed(await run("function main() { throw 'boom'; }"), Reason.RUNTIME, 500, "boom")


async def test_array_with_error_object_uses_error_message(run):
    # [500, someErrorObject] is listed under "anything else": code 500 and the Error's message. The page
    # does not say which reason: runtime (non-SIP) or script (a [code, message] array) are both accepted
    out = await run("function main() { throw [500, new Error('x')]; }")
    assert out.status == "error" and out.reason in (Reason.RUNTIME, Reason.SCRIPT), out.to_json()
    assert (out.code, out.message) == (500, "x")


async def test_reject_with_error_without_code(run):
    failed(
        await run("function main() { return Promise.reject(new Error('nope')); }"),
        Reason.RUNTIME,
        500,
        "nope",
    )


async def test_error_logs_are_kept(run):
    out = await run("function main() { console.log('before'); throw new Error('404 Not Found'); }")
    failed(out, Reason.SCRIPT, 404)
    assert out.logs == [{"level": "log", "message": "before"}]
    assert out.to_json()["logs"] == [{"level": "log", "message": "before"}]


async def test_outcome_json_shape_of_error(run):
    j = (await run("function main() { throw [603, 'Denied (DNC)']; }")).to_json()
    assert j["status"] == "error"
    assert (j["reason"], j["code"], j["message"]) == ("script", 603, "Denied (DNC)")
    assert "response" not in j
    assert isinstance(j["duration_ms"], float | int) and j["duration_ms"] >= 0
    json.dumps(j)


# ---------------------------------------------------------------- script types


async def test_script_type_has_no_host_api(run):
    src = "function main() { return [typeof api, typeof datastore, typeof require]; }"
    assert ok(await run(src, type=ScriptType.SCRIPT)) == ["undefined", "undefined", "undefined"]


async def test_script_type_runs_main(run):
    src = "function main(data) { data.routing.cli = 'anon'; return data.routing.cli; }"
    assert ok(await run(src, type=ScriptType.SCRIPT)) == "anon"


async def test_app_type_has_host_api(run):
    src = "function main() { return [typeof api, typeof datastore, typeof require]; }"
    assert ok(await run(src, type=ScriptType.APP)) == ["object", "object", "function"]


# ---------------------------------------------------------------- host API: lookups


async def test_userspace_lookup_hit(run):
    src = "async function main(d) { return await api.lookup.userspaceLookup('DNC', d.routing.dest_number); }"
    assert ok(await run(src)) == DNC["15551234567"]


async def test_userspace_lookup_miss_rejects_404(run):
    src = """async function main() {
      try { await api.lookup.userspaceLookup('DNC', '19999999999'); return 'hit'; }
      catch (e) { return e; }
    }"""
    assert ok(await run(src)) == [404, "Not Found"]


async def test_userspace_lookup_miss_uncaught_fails_the_call(run):
    src = "async function main() { await api.lookup.userspaceLookup('DNC', '19999999999'); return 'hit'; }"
    failed(await run(src), Reason.SCRIPT, 404, "Not Found")


async def test_userspace_lookup_sees_values_added_by_host(run, host):
    host.userspace_list("", "VIP")["15552223333"] = {"tier": "gold"}
    src = "function main() { return api.lookup.userspaceLookup('VIP', '15552223333'); }"
    assert ok(await run(src)) == {"tier": "gold"}


async def test_userspace_lookup_one_argument_form(run):
    # the one-argument form looks in the script's default area: an absent key rejects like the
    # two-argument form (the call itself is accepted, not a TypeError)
    src = """async function main() {
      try { return ['hit', await api.lookup.userspaceLookup('19999999999')]; }
      catch (e) { return e; }
    }"""
    assert ok(await run(src)) == [404, "Not Found"]


async def test_userspace_lookup_from_csv(run, host, tmp_path):
    with_header = tmp_path / "with_header.csv"
    with_header.write_text("key,value\n15553334444,red\n15553335555,blue\n")
    keys_only = tmp_path / "keys_only.csv"
    keys_only.write_text("key\n15553336666\n")
    no_header = tmp_path / "no_header.csv"
    no_header.write_text("15553337777,green\n")
    host.load_csv("CSVH", str(with_header))
    host.load_csv("CSVK", str(keys_only))
    host.load_csv("CSVN", str(no_header))
    src = """async function main() {
      const L = api.lookup.userspaceLookup;
      async function probe(area, key) { try { return await L(area, key); } catch (e) { return e; } }
      const k = await probe('CSVK', '15553336666');
      return [await probe('CSVH', '15553335555'), await probe('CSVH', 'key'),
              k !== undefined && !Array.isArray(k), await probe('CSVK', 'key'),
              await probe('CSVN', '15553337777')];
    }"""
    assert ok(await run(src)) == ["blue", [404, "Not Found"], True, [404, "Not Found"], "green"]


async def test_asrplus_unknown_for_unseen_number(run):
    src = "async function main() { const r = await api.lookup.asrplus('15559998888'); return r; }"
    response = ok(await run(src))
    assert isinstance(response, dict)
    assert response["status"] == "Unknown"


@pytest.mark.parametrize("method", ["tps", "nnpc", "hlr", "lrn", "ping"])
async def test_provider_lookups_reject_501_without_data_set(run, method):
    src = f"""async function main() {{
      try {{ await api.lookup.{method}('15551234567'); return 'resolved'; }}
      catch (e) {{ return [Array.isArray(e), e[0], typeof e[1]]; }}
    }}"""
    assert ok(await run(src)) == [True, 501, "string"]


# ---------------------------------------------------------------- host API: outbound


@pytest.mark.parametrize("kind", ["email", "sms", "notify", "sip"])
async def test_send_queued_and_delivered_on_success(run, kind):
    src = f"""async function main() {{
      api.send.{kind}({{to: 'dest-{kind}', text: 'hello-{kind}'}});
      return 'sent';
    }}"""
    out = await run(src)
    assert ok(out) == "sent"
    assert len(out.outbound) == 1, out.outbound
    blob = json.dumps(out.outbound[0])
    assert f"dest-{kind}" in blob and f"hello-{kind}" in blob and kind in blob
    assert out.to_json()["outbound"] == out.outbound


async def test_send_absent_on_failed_run(run):
    src = """async function main() {
      api.send.sms({to: '15550001111', text: 'x'});
      await api.send.email({to: 'a@example.com', subject: 'y'});
      throw new Error('603 Decline');
    }"""
    out = await run(src)
    failed(out, Reason.SCRIPT, 603, "Decline")
    assert out.outbound == []
    assert "outbound" not in out.to_json()


async def test_send_absent_on_runtime_error(run):
    src = "function main(d) { api.send.notify({msg: 'x'}); return d.no.such; }"
    out = await run(src)
    failed(out, Reason.RUNTIME, 500)
    assert out.outbound == []


async def test_send_delivered_once_for_many_messages(run):
    src = """function main() {
      api.send.sms({to: '1', text: 'a'}); api.send.sms({to: '2', text: 'b'}); api.send.email({to: 'c'});
      exit('ok');
    }"""
    out = await run(src)
    assert ok(out) == "ok"
    assert len(out.outbound) == 3


# ---------------------------------------------------------------- host API: datastore

DATASTORE_OPS = """async function main(d) {
  const v = (x) => (x === undefined || x === null ? 'absent' : x);
  switch (d.op) {
    case 'set': await datastore.set(d.key, d.value); return 'set';
    case 'setttl': await datastore.set(d.key, d.value, 3600); return 'set';
    case 'get': return v(await datastore.get(d.key));
    case 'incr': return await datastore.incr(d.key, d.by);
    case 'incr1': return await datastore.incr(d.key);
    case 'delete': await datastore.delete(d.key); return 'deleted';
  }
}"""


async def test_datastore_set_get_persists_across_runs(run):
    name = "ds-persist"
    assert ok(await run(DATASTORE_OPS, {"op": "get", "key": "k"}, name=name)) == "absent"
    assert ok(await run(DATASTORE_OPS, {"op": "set", "key": "k", "value": {"a": [1, 2]}}, name=name)) == "set"
    assert ok(await run(DATASTORE_OPS, {"op": "get", "key": "k"}, name=name)) == {"a": [1, 2]}
    assert ok(await run(DATASTORE_OPS, {"op": "get", "key": "k"}, name=name, call_id="other")) == {
        "a": [1, 2]
    }


async def test_datastore_set_with_ttl(run):
    name = "ds-ttl"
    assert ok(await run(DATASTORE_OPS, {"op": "setttl", "key": "t", "value": "v"}, name=name)) == "set"
    assert ok(await run(DATASTORE_OPS, {"op": "get", "key": "t"}, name=name)) == "v"


async def test_datastore_incr(run):
    name = "ds-incr"
    assert ok(await run(DATASTORE_OPS, {"op": "incr1", "key": "n"}, name=name)) == 1
    assert ok(await run(DATASTORE_OPS, {"op": "incr1", "key": "n"}, name=name)) == 2
    assert ok(await run(DATASTORE_OPS, {"op": "incr", "key": "n", "by": 5}, name=name)) == 7
    assert ok(await run(DATASTORE_OPS, {"op": "get", "key": "n"}, name=name)) == 7


async def test_datastore_delete(run):
    name = "ds-delete"
    await run(DATASTORE_OPS, {"op": "set", "key": "k", "value": 1}, name=name)
    assert ok(await run(DATASTORE_OPS, {"op": "delete", "key": "k"}, name=name)) == "deleted"
    assert ok(await run(DATASTORE_OPS, {"op": "get", "key": "k"}, name=name)) == "absent"


async def test_a_run_past_its_host_call_limit_fails(run):
    # each host call costs the worker's event loop: the 1,001st of a run ends it; the next run starts over
    src = """async function main(d) {
      const calls = [];
      for (let i = 0; i < d.n; i++) calls.push(datastore.get('k' + i));
      await Promise.all(calls);
      return d.n;
    }"""
    assert ok(await run(src, {"n": 1000}, name="ds-flood")) == 1000
    out = await run(src, {"n": 1001}, name="ds-flood", call_id="over")
    assert (out.status, str(out.reason), out.code) == ("error", "runtime", 500), out.to_json()
    assert out.message == "the run made more than 1000 host calls, the limit of one run"
    assert ok(await run(src, {"n": 1000}, name="ds-flood", call_id="again")) == 1000


async def test_datastore_not_visible_to_other_script(run):
    assert (
        ok(await run(DATASTORE_OPS, {"op": "set", "key": "secret", "value": "a"}, name="ds-owner")) == "set"
    )
    assert ok(await run(DATASTORE_OPS, {"op": "get", "key": "secret"}, name="ds-owner")) == "a"
    assert ok(await run(DATASTORE_OPS, {"op": "get", "key": "secret"}, name="ds-stranger")) == "absent"


async def test_datastore_not_visible_to_other_account(run):
    ops = {"op": "set", "key": "acct", "value": "mine"}
    assert ok(await run(DATASTORE_OPS, ops, name="ds-acct", account="acme")) == "set"
    assert (
        ok(await run(DATASTORE_OPS, {"op": "get", "key": "acct"}, name="ds-acct", account="acme")) == "mine"
    )
    assert (
        ok(await run(DATASTORE_OPS, {"op": "get", "key": "acct"}, name="ds-acct", account="evil")) == "absent"
    )


async def test_datastore_kept_across_versions_of_the_script(run):
    # "the script's own" store survives a redeploy (new version, new source)
    assert (
        ok(await run(DATASTORE_OPS, {"op": "set", "key": "v", "value": 9}, name="ds-ver", version=1)) == "set"
    )
    src2 = DATASTORE_OPS + "\n// version 2\n"
    assert ok(await run(src2, {"op": "get", "key": "v"}, name="ds-ver", version=2)) == 9


async def test_datastore_write_of_failed_run_has_no_effect(run):
    # host.py: effects are buffered and applied only when the run succeeded
    src = "async function main() { await datastore.set('f', 'written'); throw new Error('500 fail'); }"
    out = await run(src, name="ds-failed")
    assert out.status == "error"
    assert ok(await run(DATASTORE_OPS, {"op": "get", "key": "f"}, name="ds-failed")) == "absent"


async def test_datastore_inspectable_by_host(run, host):
    await run(DATASTORE_OPS, {"op": "set", "key": "visible-key", "value": "marker-7431"}, name="ds-host")
    assert host.datastore[("", "ds-host")]["visible-key"] == "marker-7431"


# ---------------------------------------------------------------- compatibility modules


async def test_cxkv_kv_get_set(run):
    src = """async function main(d) {
      const {kv} = require('cxKV');
      if (d.op === 'set') { await kv.set('greeting', 'hello', 60); return 'set'; }
      return await kv.get('greeting');
    }"""
    assert ok(await run(src, {"op": "set"}, name="cxkv")) == "set"
    assert ok(await run(src, {"op": "get"}, name="cxkv")) == "hello"


async def test_cxkv_ko_objects(run):
    src = """async function main() {
      const {ko} = require('cxKV');
      await ko.set('obj', {a: 1, b: [2, 3]}, 60);
      return await ko.get('obj');
    }"""
    assert ok(await run(src, name="cxko")) == {"a": 1, "b": [2, 3]}


async def test_cxkv_incr(run):
    src = "async function main() { const {incr} = require('cxKV'); return await incr('calls', 2, 60); }"
    assert ok(await run(src, name="cxincr")) == 2
    assert ok(await run(src, name="cxincr")) == 4


async def test_cxkv_shares_the_datastore(run):
    src = (
        "async function main() { await require('cxKV').kv.set('shared', 'both', 60); "
        "return await datastore.get('shared'); }"
    )
    assert ok(await run(src, name="cxshared")) == "both"


async def test_cxuserspace_crud(run):
    src = """async function main() {
      const us = require('cxUserspace');
      const out = [];
      await us.create('BLOCK', '15557770000', 'first');
      let r = await us.read('BLOCK', '15557770000');
      out.push([r.key, r.value]);
      await us.update('BLOCK', '15557770000', 'second');
      r = await us.read('BLOCK', '15557770000');
      out.push([r.key, r.value]);
      out.push(await api.lookup.userspaceLookup('BLOCK', '15557770000'));
      await us.delete('BLOCK', '15557770000');
      out.push(!(await us.read('BLOCK', '15557770000')));
      return out;
    }"""
    assert ok(await run(src, name="cxus")) == [
        ["15557770000", "first"],
        ["15557770000", "second"],
        "second",
        True,
    ]


async def test_cxuserspace_read_absent_is_falsy(run):
    src = (
        "async function main() { "
        "const r = await require('cxUserspace').read('DNC', '10000000000'); return !r; }"
    )
    assert ok(await run(src)) is True


async def test_cxuserspace_reads_host_list(run):
    src = "async function main() { return await require('cxUserspace').read('DNC', '15550001111'); }"
    out = ok(await run(src))
    assert out["key"] == "15550001111" and out["value"] == "fraud"


@pytest.mark.parametrize("module", ["cxRest", "axios", "fs", "cxOriginate"])
async def test_require_unknown_module_names_it(run, module):
    out = await run(f"function main() {{ const m = require('{module}'); return typeof m; }}")
    assert out.status == "error", out.to_json()
    assert out.reason in (Reason.RUNTIME, Reason.NOT_FOUND), out.to_json()
    assert module in out.message


async def test_ctx_is_named_when_missing(run):
    out = await run("function main() { ctx.answer(); return 'answered'; }")
    assert out.status == "error"
    assert "ctx" in out.message


# ---------------------------------------------------------------- console and env


async def test_console_levels_captured(run):
    src = """function main() {
      console.log('l'); console.info('i'); console.warn('w'); console.error('e');
      return 1;
    }"""
    out = await run(src)
    assert ok(out) == 1
    assert out.logs == [
        {"level": "log", "message": "l"},
        {"level": "info", "message": "i"},
        {"level": "warn", "message": "w"},
        {"level": "error", "message": "e"},
    ]


async def test_console_several_arguments(run):
    out = await run("function main() { console.log('a', 1, {b: 2}); return 1; }")
    ok(out)
    assert len(out.logs) == 1
    message = out.logs[0]["message"]
    assert (message.startswith("a 1 ") and '"b"' in message) or "b: 2" in message, message


async def test_console_in_script_type(run):
    out = await run("function main() { console.warn('careful'); return 1; }", type=ScriptType.SCRIPT)
    assert ok(out) == 1
    assert out.logs == [{"level": "warn", "message": "careful"}]


async def test_process_env(run):
    src = """function main() {
      const e = process.env;
      return [e.K, e.OTHER, e.SCRIPTFORGE_NAME, e.SCRIPTFORGE_VERSION, typeof e.SCRIPTFORGE_ID,
              e.SCRIPTFORGE_ID.length > 0, e.MISSING === undefined];
    }"""
    out = await run(src, name="env-script", version=3, env={"K": "V", "OTHER": "x y"})
    assert ok(out) == ["V", "x y", "env-script", "3", "string", True, True]


async def test_process_env_is_per_script(run):
    src = "function main() { return [process.env.K === undefined, process.env.SCRIPTFORGE_NAME]; }"
    await run(src, name="env-a", env={"K": "secret-a"})
    assert ok(await run(src, name="env-b")) == [True, "env-b"]


async def test_process_env_does_not_leak_host_environment(run):
    src = "function main() { return [process.env.PATH === undefined, process.env.HOME === undefined]; }"
    assert ok(await run(src)) == [True, True]


# ---------------------------------------------------------------- determinism


async def test_date_reads_invocation_time(run):
    src = (
        "function main() { "
        "return [Date.now(), new Date().getTime(), new Date().toISOString(), Date.now() - Date.now()]; "
        "}"
    )
    now = 1_704_164_645_123  # 2024-01-02T03:04:05.123Z
    assert ok(await run(src, now_ms=now)) == [now, now, "2024-01-02T03:04:05.123Z", 0]


async def test_date_frozen_during_run(run):
    src = "function main() { const a = Date.now(); for (let i = 0; i < 2e6; i++) {} return Date.now() - a; }"
    assert ok(await run(src)) == 0


async def test_date_constructor_with_arguments_still_works(run):
    src = (
        "function main() { "
        "return [new Date(0).getTime(), Date.UTC(2020, 0, 1), new Date('2020-01-01T00:00:00Z').getTime()]; "
        "}"
    )
    assert ok(await run(src)) == [0, 1577836800000, 1577836800000]


async def test_time_of_day_rule_tested_by_choosing_timestamp(run):
    src = (
        "function main() { const h = new Date().getUTCHours(); "
        "if (h < 8) throw new Error('480 Disallowed by Date/Time Restriction'); return 'open'; }"
    )
    night = int(dt.datetime(2024, 5, 1, 3, 0, tzinfo=dt.UTC).timestamp() * 1000)
    day = int(dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC).timestamp() * 1000)
    failed(await run(src, now_ms=night), Reason.SCRIPT, 480, "Disallowed by Date/Time Restriction")
    assert ok(await run(src, now_ms=day)) == "open"


RANDOM = "function main() { const r = []; for (let i = 0; i < 5; i++) r.push(Math.random()); return r; }"


async def test_random_same_for_same_call_id(run):
    a = ok(await run(RANDOM, call_id="call-abc"))
    b = ok(await run(RANDOM, call_id="call-abc"))
    assert a == b
    assert all(0 <= x < 1 for x in a) and len(set(a)) == 5


async def test_random_same_for_same_call_id_in_other_script(run):
    # the seed is the invocation's, not the process's or the context's
    a = ok(await run(RANDOM, call_id="call-xyz", name="rand-1"))
    b = ok(await run(RANDOM, call_id="call-xyz", name="rand-2"))
    c = ok(await run(RANDOM, call_id="call-xyz", name="rand-1"))
    assert a == b == c


async def test_random_differs_for_other_call_id(run):
    a = ok(await run(RANDOM, call_id="call-1"))
    b = ok(await run(RANDOM, call_id="call-2"))
    assert a != b


# ---------------------------------------------------------------- routing data passes through


async def test_headers_returned_unchanged(run):
    data = copy.deepcopy(ROUTING_VARS)
    data["headers"] = [{"key": "X-A", "value": "1"}]
    data["remove_headers"] = [{"key": "X-B"}]
    data["routing"]["headers"] = [{"key": "X-C", "value": "3"}]
    data["routing"]["remove_headers"] = [{"key": "X-D"}]
    data["routing"]["egress_routing"][1]["remove_headers"] = [{"key": "X-E"}]
    assert ok(await run("function main(data) { return data; }", data)) == data


async def test_script_adds_headers(run):
    src = """function main(data) {
      data.routing.headers = [{key: 'X-Checked', value: 'yes'}];
      data.routing.egress_routing[0].remove_headers = [{key: 'X-Route'}];
      return data;
    }"""
    expected = copy.deepcopy(ROUTING_VARS)
    expected["routing"]["headers"] = [{"key": "X-Checked", "value": "yes"}]
    expected["routing"]["egress_routing"][0]["remove_headers"] = [{"key": "X-Route"}]
    assert ok(await run(src)) == expected


async def test_unicode_round_trip(run):
    data = {"name": "Zoë ☎ 电话", "emoji": "📞"}
    assert ok(await run("function main(d) { return d; }", data)) == data


# ---------------------------------------------------------------- syntax

BAD = "function main(d) {\n  var x = 1;\n  var y = @;\n  return y;\n}\n"


async def test_syntax_error_reason_line_column(run):
    out = await run(BAD)
    failed(out, Reason.SYNTAX)
    assert (out.line, out.column) == (3, 11), out.to_json()
    j = out.to_json()
    assert (j["line"], j["column"]) == (3, 11)
    assert out.message


async def test_syntax_error_in_script_type(run):
    out = await run("function main() {\n  return {a: 1,,};\n}", type=ScriptType.SCRIPT)
    failed(out, Reason.SYNTAX)
    assert out.line == 2


async def test_syntax_error_in_driver(run):
    out = await run(
        "module.exports = {\n  f: function () { return 1 }\n  g: 2\n};", type=ScriptType.DRIVER, function="f"
    )
    failed(out, Reason.SYNTAX)
    assert (out.line, out.column) == (3, 3), out.to_json()


async def test_syntax_error_unterminated_on_first_line(run):
    out = await run("function main() { return 'abc; }")
    failed(out, Reason.SYNTAX)
    assert out.line == 1


async def test_check_syntax_ok():
    assert check_syntax("function main(d) { return d; }") is None
    assert check_syntax("async function main(d) { await null; return d; }") is None
    assert check_syntax("module.exports = {f: (d) => d};") is None


async def test_check_syntax_problem():
    problem = check_syntax(BAD)
    assert problem is not None
    assert (problem.line, problem.column) == (3, 11)
    assert problem.message


# ---------------------------------------------------------------- deadlines


async def test_expired_deadline_is_not_run(run):
    src = "async function main() { await datastore.set('ran', true); return 'ran'; }"
    out = await run(src, name="expired-script", deadline_ms=int(time.time() * 1000) - 1000)
    failed(out, Reason.EXPIRED)
    check = await run(DATASTORE_OPS, {"op": "get", "key": "ran"}, name="expired-script")
    assert ok(check) == "absent"
