"""Attacks on the boundary between accounts, each run by the account "mallory" beside the victim.

The classes (docs/sandbox.md, threat model): the host-call protocol, other accounts' data, work that
outlives its run, strings the host cannot encode, the real clock, limits on size and nesting, native
recursion in the engine, neighbours' memory and processes, scripts that keep getting their process
killed, and a sandbox process that is itself subverted. Every test runs beside the victim (sbxvictim),
whose answers must stay exact; a test says what the attacker must get, and that it got nothing more.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sandbox import Invocation, Script, ScriptType

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.usefixtures("victim")]

MALLORY = "mallory"


@pytest.fixture
def mallory(pool: Any) -> Any:
    from sbxutil import PoolRunner

    return PoolRunner(pool, default_name="mallory-script", account=MALLORY)


def _ok(out: Any) -> Any:
    assert out.status == "ok", out.to_json()
    return out.response


def _no_victim_data(out: Any) -> None:
    from sbxvictim import SECRET

    blob = json.dumps(out.to_json(), ensure_ascii=False)
    assert SECRET not in blob and "15550009999" not in blob, blob[:500]


# ---------------------------------------------------------------- the host-call protocol

SETTERS_ON_ARRAY_INDEXES = """
async function main() {
  var seen = 0;
  // whatever array the runtime builds by assignment would pass its items through these
  for (var i = 0; i < 4; i++) (function (i) {
    Object.defineProperty(Array.prototype, String(i), {configurable: true,
      get: function () { return undefined; },
      set: function (v) { seen++; Object.defineProperty(this, String(i), {value: i === 1 ? '__setattr__' : v,
        writable: true, enumerable: true, configurable: true}); }});
  })(i);
  Object.defineProperty(Object.prototype, 'method', {configurable: true, set: function () { seen++; }});
  Object.defineProperty(Object.prototype, 'scope', {configurable: true,
    get: function () { return ['victim', 'victim-router']; }});
  var got = await datastore.get('secret');
  await datastore.set('mine', 1);
  return {got: got, mine: await datastore.get('mine'), seen: seen};
}
"""

TOJSON_ON_PROTOTYPES = """
async function main() {
  Array.prototype.toJSON = function () { return [1, '_datastore_set', ['secret', 'pwned']]; };
  String.prototype.toJSON = function () { return '__class__'; };
  var got = await datastore.get('secret');
  delete Array.prototype.toJSON; delete String.prototype.toJSON;
  return {got: got};
}
"""

JSON_REPLACED = """
async function main() {
  JSON.stringify = function () { return '[[1,"__setattr__",["_script_scope",["victim","victim-router"]]]]'; };
  JSON.parse = function () { return [[1, true, 'forged']]; };
  Reflect.apply = function () { return 'hijacked'; };
  Function.prototype.call = Function.prototype.apply = function () { return 'hijacked'; };
  var list = await api.lookup.userspaceLookup('DNC', '15550009999').catch(function (e) { return e; });
  return {got: await datastore.get('secret'), list: list};
}
"""


@pytest.mark.parametrize(
    "source",
    [SETTERS_ON_ARRAY_INDEXES, TOJSON_ON_PROTOTYPES, JSON_REPLACED],
    ids=["setters", "tojson", "json"],
)
async def test_tampered_built_ins_cannot_change_a_host_call(mallory: Any, source: str) -> None:
    # the calls reach mallory's own datastore and lists, with the method and arguments it wrote
    out = await mallory(source, {}, name="mallory-tamper")
    response = _ok(out)
    assert response["got"] is None, out.to_json()
    if "list" in response:
        assert response["list"] == [404, "Not Found"]
    if "mine" in response:
        assert response["mine"] == 1
    _no_victim_data(out)


async def test_the_protocol_is_reachable_by_no_name(mallory: Any) -> None:
    source = """
    function main() {
      var found = [];
      var names = Object.getOwnPropertyNames(globalThis);
      for (var i = 0; i < names.length; i++) {
        var v; try { v = globalThis[names[i]]; } catch (e) { continue; }
        if (/^__|^sf|protocol|takeCalls|settle/i.test(names[i])) found.push(names[i]);
        if (v && (typeof v === 'object' || typeof v === 'function')) {
          var inner = Object.getOwnPropertyNames(v);
          for (var j = 0; j < inner.length; j++) {
            var internal = /takeCalls|settle|isDone|failIdle|abandon/.test(inner[j]);
            if (internal) found.push(names[i] + '.' + inner[j]);
          }
        }
      }
      var probes = ['__sf', '__sf_protocol', '__date_clock'];
      for (var k = 0; k < probes.length; k++) { try { eval(probes[k]); found.push(probes[k]); } catch (e) {} }
      return found;
    }"""
    assert _ok(await mallory(source, {}, name="mallory-search")) == []


# ---------------------------------------------------------------- other accounts' data


async def test_a_list_is_reached_only_by_its_own_account(mallory: Any, host: Any) -> None:
    source = """
    async function main() {
      var us = require('cxUserspace');
      var out = {};
      out.lookup = await api.lookup.userspaceLookup('DNC', '15550009999').catch(function (e) { return e; });
      out.read = await us.read('DNC', '15550009999');
      out.update = await us.update('DNC', '15550009999', 'cleared').catch(function (e) { return e; });
      out.del = await us.delete('DNC', '15550009999');
      out.create = await us.create('DNC', '15550001234', 'mallory was here');
      return out;
    }"""
    out = _ok(await mallory(source, {}, name="mallory-lists"))
    assert out["lookup"] == [404, "Not Found"]
    assert not out["read"] and out["update"] == [404, "Not Found"] and out["del"] is False
    # what it created is in its own list of that name, not the victim's
    assert host.userspace_list(MALLORY, "DNC") == {"15550001234": "mallory was here"}


async def test_a_datastore_is_reached_only_by_its_own_script_and_account(mallory: Any) -> None:
    # the same script name as the victim's, in another account
    source = """
    async function main() {
      var before = await datastore.get('secret');
      await datastore.set('secret', 'pwned');
      var kv = require('cxKV');
      return {before: before, kv: await kv.kv.get('secret')};
    }"""
    out = _ok(await mallory(source, {}, name="victim-router"))
    assert out == {"before": None, "kv": "pwned"}


# ---------------------------------------------------------------- nothing runs after the Outcome

LEFTOVERS = {
    "regex_job": "function main() { Promise.resolve().then(function () { "
    "return /(a+)+$/.test('a'.repeat(64) + 'b'); }); return 'ok'; }",
    "loop_job_after_exit": "function main() { exit('ok'); "
    "Promise.resolve().then(function () { while (true) {} }); }",
    "async_loop": "async function main() { "
    "(async function () { await null; await null; while (true) {} })(); return 'ok'; }",
    "thenable": "function main() { Promise.resolve({then: function (r) { while (true) {} }}); return 'ok'; }",
}


def _cpu_ns(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except OSError:
        return 0


@pytest.mark.parametrize("name", list(LEFTOVERS))
async def test_work_queued_when_a_run_ends_never_runs(mallory: Any, pool: Any, name: str) -> None:
    # more runs than the pool has processes: a process left busy by the last run would show
    for i in range(pool.stats()["processes"] + 2):
        out = await mallory(
            LEFTOVERS[name], {}, name=f"mallory-left-{name}", call_id=f"l{i}", timeout_ms=2000
        )
        assert _ok(out) == "ok"
        assert mallory.last_ms < 500, f"run {i} took {mallory.last_ms:.0f} ms"
    pids = [pid for pid, account in pool.processes() if account == MALLORY]
    before = {pid: _cpu_ns(pid) for pid in pids}
    await asyncio.sleep(0.3)
    burnt_ms = sum(_cpu_ns(pid) - ns for pid, ns in before.items()) / 1e6
    assert burnt_ms < 30, f"mallory's idle processes used {burnt_ms:.0f} ms of CPU after their runs ended"


FORMATTING = {
    "thrown_tostring": "function main() { throw {toString: function () { while (true) {} }}; }",
    "thrown_toprimitive": "function main() { "
    "throw {[Symbol.toPrimitive]: function () { while (true) {} }}; }",
    "top_level_throw": "throw {toString: function () { while (true) {} }};\nfunction main() { return 1; }",
    "message_getter": "function main() { var e = new Error('x'); "
    "Object.defineProperty(e, 'message', {get: function () { while (true) {} }}); throw e; }",
    "error_tostring_then_timeout": "function main() { "
    "Error.prototype.toString = function () { while (true) {} }; while (true) {} }",
    "reject_tostring": "async function main() { await null; "
    "throw {toString: function () { while (true) {} }}; }",
}


@pytest.mark.parametrize("name", list(FORMATTING))
async def test_turning_an_error_into_text_runs_under_the_deadline(mallory: Any, pool: Any, name: str) -> None:
    kills = pool.stats()["kills"]
    out = await mallory(FORMATTING[name], {}, name=f"mallory-fmt-{name}", timeout_ms=200)
    assert out.reason == "timeout", out.to_json()
    assert mallory.last_ms < 200 + 300, f"{mallory.last_ms:.0f} ms"
    # ended by the engine's interrupt, not by killing the process
    assert pool.stats()["kills"] == kills


# ---------------------------------------------------------------- strings the host cannot encode

SURROGATES = {
    "response": ("function main() { return 'a\\ud800b'; }", "ok"),
    "object_key": ("function main() { var o = {}; o['k\\udc00'] = 'v\\udbff'; return o; }", "ok"),
    "log_cut_mid_pair": (
        "function main() { console.log('a'.repeat(1999) + '\\ud83d\\ude00'); return 1; }",
        "ok",
    ),
    "error_message": ("function main() { throw new Error('500 bad \\ud800'); }", "error"),
    "err_array": ("function main() { err([486, 'busy \\udfff']); }", "error"),
    "outbound": ("function main() { api.send.sms({text: 'x\\ud800'}); return 1; }", "ok"),
    "datastore": (
        "async function main() { await datastore.set('\\ud800', '\\udc00'); "
        "return await datastore.get('\\ud800'); }",
        "ok",
    ),
    "pair_kept": ("function main() { return '\\ud83d\\ude00'; }", "ok"),
}


@pytest.mark.parametrize("name", list(SURROGATES))
async def test_any_string_becomes_a_valid_outcome(mallory: Any, name: str) -> None:
    source, status = SURROGATES[name]
    out = await mallory(source, {}, name=f"mallory-utf-{name}")
    assert out.status == status, out.to_json()
    text = json.dumps(out.to_json(), ensure_ascii=False)
    text.encode("utf-8")  # encodable: no lone surrogate survived
    if name == "pair_kept":
        assert out.response == "\U0001f600"
    elif name == "response":
        assert out.response == "a\ufffdb"
    elif name == "log_cut_mid_pair":
        assert out.logs[0]["message"] == "a" * 1999 + "…"


# ---------------------------------------------------------------- no real clock


async def test_no_clock_but_the_invocations(mallory: Any) -> None:
    source = """
    function main() {
      var a = Date.now(), d = new Date();
      for (var i = 0; i < 2e6; i++) {}
      var ctor = Object.getPrototypeOf(d).constructor;
      return [typeof __date_clock, typeof performance, typeof process.hrtime, Date.now() - a, d.getTime(),
              ctor.now(), new ctor().getTime(), typeof Atomics, typeof SharedArrayBuffer];
    }"""
    now = 1_650_000_000_000
    out = _ok(await mallory(source, {}, name="mallory-clock", now_ms=now))
    assert out == ["undefined", "undefined", "undefined", 0, now, now, now, "undefined", "undefined"]


# ---------------------------------------------------------------- limits on size and nesting

DEEP = "var deep = []; for (var i = 0; i < 50000; i++) deep = [deep];"
DEEP_CASES = {
    "console_log": f"function main() {{ {DEEP} console.log(deep); return 'logged'; }}",
    "console_tojson": f"function main() {{ {DEEP} console.log({{toJSON: function () {{ return deep; }}}}); "
    "return 'logged'; }",
    "stringify_getter": f"function main() {{ {DEEP} var n = 0; "
    "return JSON.stringify({get a() { return n++ ? deep : 1; }}); }",
    "response_proxy": f"function main() {{ {DEEP} return new Proxy({{}}, {{"
    "ownKeys: function () { return ['a']; }, "
    "getOwnPropertyDescriptor: function () { return {value: 1, enumerable: true, configurable: true}; }, "
    "get: function () { return deep; }}); }",
    "host_call_argument": f"async function main() {{ {DEEP} return await datastore.set('k', deep)"
    ".catch(function (e) { return e; }); }",
    "send_params": f"async function main() {{ {DEEP} return await api.send.sms({{d: deep}})"
    ".catch(function (e) { return e; }); }",
}


@pytest.mark.parametrize("name", list(DEEP_CASES))
async def test_deep_values_are_refused_not_crashed(mallory: Any, pool: Any, name: str) -> None:
    kills = pool.stats()["kills"]
    out = await mallory(DEEP_CASES[name], {}, name=f"mallory-deep-{name}", timeout_ms=3000)
    assert out.reason != "crash" and pool.stats()["kills"] == kills, out.to_json()
    assert mallory.last_ms < 3000
    text = json.dumps(out.to_json())
    if out.status == "ok" and isinstance(out.response, list):
        assert out.response[0] == 400 and "deeper than" in out.response[1], text
    elif out.status == "error":
        assert "deeper than" in (out.message or ""), text


async def test_host_call_payloads_are_bounded(mallory: Any) -> None:
    source = """
    async function main(d) {
      var big = 'x'.repeat(d.size);
      return await datastore.set('k', big).then(function () { return 'stored'; }, function (e) { return e; });
    }"""
    out = _ok(await mallory(source, {"size": 16 * 1024 * 1024}, name="mallory-16mb", memory_mb=200))
    assert out[0] == 413, out
    assert mallory.last_ms < 1000
    assert _ok(await mallory(source, {"size": 60_000}, name="mallory-16mb")) == "stored"
    # many calls each within the limit: the run's total is bounded too, and the run fails
    flood = """
    async function main() {
      var v = 'y'.repeat(60000), all = [];
      for (var i = 0; i < 100; i++) all.push(datastore.set('k' + i, v));
      await Promise.all(all);
      return 'all sent';
    }"""
    out = await mallory(flood, {}, name="mallory-flood")
    assert out.reason == "runtime" and "characters" in out.message, out.to_json()


async def test_a_datastore_has_a_quota(mallory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandbox.local

    monkeypatch.setattr(sandbox.local, "MAX_DATASTORE_CHARS", 200_000)
    source = """
    async function main(d) {
      return await datastore.set('k' + d.i, 'z'.repeat(50000)).then(function () { return 'ok'; },
        function (e) { return e; });
    }"""
    answers = [_ok(await mallory(source, {"i": i}, name="mallory-quota", call_id=f"q{i}")) for i in range(6)]
    assert answers[:3] == ["ok", "ok", "ok"]
    assert answers[4][0] == 507, answers


async def test_limits_out_of_bounds_are_refused_before_running(mallory: Any) -> None:
    # a registry record could carry any numbers: the pool refuses them with a clear error
    out = await mallory("function main() { return 1; }", {}, name="mallory-limits", memory_mb=100_000)
    assert out.reason == "runtime" and "memory limit" in out.message and "512" in out.message, out.to_json()
    out = await mallory("function main() { return 1; }", {}, name="mallory-limits", timeout_ms=3_600_000)
    assert out.reason == "runtime" and "time limit" in out.message, out.to_json()


# ---------------------------------------------------------------- native recursion in the engine

NATIVE = {
    "parse_deep_source": "function main() { return eval('['.repeat(100000)); }",
    "regexp_deep_groups": "function main() { return new RegExp('('.repeat(100000)).source.length; }",
    "json_parse_deep": "function main() { "
    "return JSON.parse('['.repeat(100000) + ']'.repeat(100000)).length; }",
    "string_of_deep_array": f"function main() {{ {DEEP} return String(deep).length; }}",
    "flat_deep_array": f"function main() {{ {DEEP} return deep.flat(Infinity).length; }}",
    "proxy_chain": "function main() { var p = {}; for (var i = 0; i < 100000; i++) p = new Proxy(p, {}); "
    "return p.x; }",
}


@pytest.mark.parametrize("name", list(NATIVE))
async def test_native_recursion_ends_the_run_only(mallory: Any, name: str) -> None:
    out = await mallory(NATIVE[name], {}, name=f"mallory-native-{name}", timeout_ms=2000)
    assert out.status == "error" and str(out.reason) in ("runtime", "memory", "crash", "timeout"), (
        out.to_json()
    )
    assert mallory.last_ms < 2000 + 1000


# ---------------------------------------------------------------- neighbours


async def test_many_scripts_of_one_account_fill_only_its_own_processes(mallory: Any) -> None:
    # each keeps 60 MB in a global: together far over one process's budget; the runner drops the
    # least recently used contexts instead of letting any run fail for memory others hold
    source = "var keep = 'm'.repeat(60 * 1024 * 1024);\nfunction main(d) { return keep.length + d.i; }"

    async def one(i: int) -> Any:
        return await mallory(source + f"\n// {i}", {"i": i}, name=f"mallory-mem-{i}", memory_mb=100)

    outs = []
    for start in range(0, 24, 4):
        outs += await asyncio.gather(*(one(i) for i in range(start, start + 4)))
    assert [o.response for o in outs] == [60 * 1024 * 1024 + i for i in range(24)], [
        o.to_json() for o in outs
    ]


async def test_one_account_holds_at_most_its_share(pool: Any) -> None:
    from sbxutil import PoolRunner

    loops = [PoolRunner(pool, f"mallory-loop-{i}", account=MALLORY) for i in range(8)]
    tasks = [
        asyncio.create_task(r("function main() { while (true) {} }", {}, timeout_ms=1500)) for r in loops
    ]
    await asyncio.sleep(0.2)
    held = [account for _pid, account in pool.processes() if account == MALLORY]
    busy = pool.stats()["busy"]
    # a third account's run gets a process at once, though mallory has eight runs waiting
    carol = PoolRunner(pool, "carol-script", account="carol")
    out = await carol("function main() { return 'carol'; }", {})
    carol_ms = carol.last_ms
    outs = await asyncio.gather(*tasks)
    assert all(o.reason == "timeout" for o in outs)
    processes = pool.stats()["processes"]
    assert len(held) <= processes // 2 and busy <= processes, (held, busy)
    assert out.response == "carol" and carol_ms < 1000, (out.to_json(), carol_ms)


async def test_a_script_whose_runs_keep_getting_killed_is_backed_off(mallory: Any, pool: Any) -> None:
    # a backtracking regex cannot be interrupted: each run costs a kill and a fork, until backed off
    source = "function main() { return /(a+)+$/.test('a'.repeat(40) + 'b'); }"
    before = pool.stats()
    outs = [
        await mallory(source, {}, name="mallory-churn", call_id=f"k{i}", timeout_ms=20) for i in range(20)
    ]
    after = pool.stats()
    assert all(o.reason == "timeout" for o in outs)
    refused = [o for o in outs if o.message.startswith("not run")]
    assert len(refused) >= 15, [o.message for o in outs]
    assert after["kills"] - before["kills"] <= 5, (before, after)
    assert "killed in each of this script's last 3 runs" in refused[0].message


async def test_a_backed_off_script_runs_again_once_the_wait_is_over(pool: Any) -> None:
    from sandbox.backoff import KillBackoff

    # the pool's own backoff, with a short wait for this test
    pool._backoff = KillBackoff(after=2, first_s=0.2, max_s=1.0)
    script = Script(
        name="mallory-recover",
        source="function main(d) { if (d.spin) return /(a+)+$/.test('a'.repeat(40) + 'b'); return 'fine'; }",
        account=MALLORY,
        timeout_ms=20,
    )
    for i in range(2):
        assert (await pool.run(script, Invocation(vars={"spin": True}, call_id=f"s{i}"))).reason == "timeout"
    refused = await pool.run(script, Invocation(vars={"spin": False}))
    assert refused.message.startswith("not run"), refused.to_json()
    await asyncio.sleep(0.25)
    assert (await pool.run(script, Invocation(vars={"spin": False}))).response == "fine"
    pool._backoff = KillBackoff()


# ---------------------------------------------------------------- a subverted sandbox process

#: a stand-in for a sandbox process that native code has taken over: it says ready, then answers the
#: first batch with what the prelude never sends (the case named in argv[2])
FAKE_CHILD = r"""
import json, sys
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
case = sys.argv[2]
conn.send_bytes(b"R{}")
batch = conn.recv_bytes()
run_id = json.loads(batch[1:].partition(b"\n")[0])["runs"][0]["run_id"]
head = json.dumps({"run_id": run_id, "ms": 1.0}).encode()
def done(result, outbound=(), rid=run_id):
    body = {"result": result, "logs": [], "outbound": list(outbound)}
    meta = json.dumps({"run_id": rid, "ms": 1.0}).encode()
    conn.send_bytes(b"D" + meta + b"\n" + json.dumps(body).encode())
if case == "oversized":
    conn._send(b"\x7f\xff\xff\xff" + b"x" * 65536)
elif case == "invented_channel":
    done({"ok": True, "value": 1}, [{"channel": "fax", "params": {}}])
elif case == "too_many_outbound":
    done({"ok": True, "value": 1}, [{"channel": "sms", "params": {}}] * 101)
elif case == "attribute_as_method":
    call = [1, "__setattr__", ["_script_scope", ["victim", "x"]]]
    conn.send_bytes(b"C" + head + b"\n" + json.dumps([call]).encode())
elif case == "too_many_calls":
    calls = [[i, "datastore.get", ["k"]] for i in range(1001)]
    conn.send_bytes(b"C" + head + b"\n" + json.dumps(calls).encode())
elif case == "parent_reason":
    done({"ok": False, "error": {"kind": "crash", "code": 500, "message": "forged"}})
elif case == "wrong_run":
    done({"ok": True, "value": 1}, rid=run_id + 7)
elif case == "not_json":
    conn.send_bytes(b"D" + head + b"\n{not json")
conn.recv_bytes()
"""

SUBVERSIONS = [
    "oversized",
    "invented_channel",
    "too_many_outbound",
    "attribute_as_method",
    "too_many_calls",
    "parent_reason",
    "wrong_run",
    "not_json",
]


@pytest.mark.parametrize("case", SUBVERSIONS)
async def test_a_subverted_process_is_killed_and_its_run_ends_crash(case: str) -> None:
    import os
    import socket
    import subprocess
    import sys

    from sandbox import LocalHost, SandboxPool
    from sandbox.template import Forked

    started: list[subprocess.Popen[bytes]] = []

    async def fake_fork(timeout_s: float) -> Forked:
        ours, theirs = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_CHILD, str(theirs.fileno()), case], pass_fds=(theirs.fileno(),)
        )
        theirs.close()
        started.append(proc)
        return Forked(pid=proc.pid, channel_fd=ours.detach(), pidfd=os.pidfd_open(proc.pid))

    host = LocalHost()
    async with SandboxPool(host=host, processes=1) as pool:
        pool._template.fork = fake_fork  # type: ignore[method-assign]
        pool._procs[0].kill()
        await pool._fork_into(pool._procs[0])
        script = Script(name="subverted", source="function main() { return 1; }", account=MALLORY)
        out = await pool.run(script, Invocation(vars={}))
        assert out.reason == "crash" and "broke the protocol" in out.message, out.to_json()
        assert out.outbound == [] and pool.stats()["violations"] == 1
        assert started[0].wait(timeout=5) == -9  # killed
        assert host.datastore == {}  # nothing it asked for happened
        for proc in started[1:]:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the global object

STANDARD = {
    "AggregateError", "Array", "ArrayBuffer", "BigInt", "BigInt64Array", "BigUint64Array", "Boolean",
    "DataView", "Date", "Error", "EvalError", "Float32Array", "Float64Array", "Function", "Infinity",
    "Int16Array", "Int32Array", "Int8Array", "InternalError", "JSON", "Map", "Math", "NaN", "Number",
    "Object", "Promise", "Proxy", "RangeError", "ReferenceError", "Reflect", "RegExp", "Set", "String",
    "Symbol", "SyntaxError", "TypeError", "URIError", "Uint16Array", "Uint32Array", "Uint8Array",
    "Uint8ClampedArray", "WeakMap", "WeakSet", "decodeURI", "decodeURIComponent", "encodeURI",
    "encodeURIComponent", "escape", "eval", "globalThis", "isFinite", "isNaN", "parseFloat", "parseInt",
    "undefined", "unescape",
}  # fmt: skip
#: the script API (docs/script-api.md): what every type has, and what app and driver add
API_ALL = {"console", "process", "module", "exports", "vars", "exit", "err", "ctx"} | {
    "setTimeout",
    "setInterval",
    "clearTimeout",
    "clearInterval",
}
API_HOST = {"api", "datastore", "require"}


@pytest.mark.parametrize("script_type", ["script", "app", "driver"])
async def test_a_fresh_context_has_only_standard_built_ins_and_the_documented_api(
    mallory: Any, script_type: str
) -> None:
    if script_type == "driver":
        source = "module.exports = {names: function () { return Object.getOwnPropertyNames(globalThis); }};"
        out = await mallory(
            source, {}, name=f"mallory-globals-{script_type}", type=ScriptType.DRIVER, function="names"
        )
    else:
        source = "function main() { return Object.getOwnPropertyNames(globalThis); }"
        out = await mallory(source, {}, name=f"mallory-globals-{script_type}", type=ScriptType(script_type))
    names = set(_ok(out)) - {"main"}
    expected = STANDARD | API_ALL | (API_HOST if script_type != "script" else set())
    assert names == expected, {"unexpected": sorted(names - expected), "missing": sorted(expected - names)}


# ---------------------------------------------------------------- timing


async def test_the_victim_kept_its_pace(victim: Any) -> None:
    # a sanity bound only (the machine is shared); bench sandbox measures the p99 against its undisturbed one
    await asyncio.sleep(0.3)
    assert len(victim.latencies_ms) > 10
    assert max(victim.latencies_ms) < 1000


async def test_script_keys_never_collide_across_accounts_or_configurations() -> None:
    # contexts are cached and scripts backed off under the key: "a/b" + "c" must not be "a" + "b/c",
    # and a context built with other limits or environment is another context
    assert Script(name="c", source="x", account="a/b").key != Script(name="b/c", source="x", account="a").key
    assert Script(name="n", source="x", memory_mb=50).key != Script(name="n", source="x", memory_mb=400).key
    assert (
        Script(name="n", source="x", env={"A": "1"}).key != Script(name="n", source="x", env={"A": "2"}).key
    )
