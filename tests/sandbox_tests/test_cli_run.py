"""``scriptforge run FILE --vars JSON ...`` as the design's CLI section says: one Outcome JSON on
stdout; exit 0 for ok, 1 for error, 2 for a usage error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTFORGE = ROOT / ".venv" / "bin" / "scriptforge"
COMMAND = [str(SCRIPTFORGE)] if SCRIPTFORGE.exists() else [sys.executable, "-m", "pipeline"]


def sf(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "run", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def outcome(proc: subprocess.CompletedProcess[str]) -> dict:
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    assert lines, f"no stdout; stderr: {proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture
def script(tmp_path):
    def write(source: str, name: str = "s.js") -> str:
        path = tmp_path / name
        path.write_text(source)
        return str(path)

    return write


def test_ok_outcome_exit_0(script):
    proc = sf(
        script("function main(data) { console.log('hi'); return {n: data.n + 1}; }"), "--vars", '{"n": 1}'
    )
    assert proc.returncode == 0, proc.stderr
    out = outcome(proc)
    assert out["status"] == "ok"
    assert out["response"] == {"n": 2}
    assert out["logs"] == [{"level": "log", "message": "hi"}]
    assert isinstance(out["duration_ms"], int | float)


def test_error_outcome_exit_1(script):
    proc = sf(script("function main() { throw new Error('603 Denied (DNC)'); }"), "--vars", "{}")
    assert proc.returncode == 1, proc.stderr
    out = outcome(proc)
    assert (out["status"], out["reason"], out["code"], out["message"]) == (
        "error",
        "script",
        603,
        "Denied (DNC)",
    )


def test_bad_vars_json_is_usage_error(script):
    proc = sf(script("function main(d) { return d; }"), "--vars", "{not json")
    assert proc.returncode == 2
    assert "--vars" in proc.stderr or "JSON" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == ""


def test_missing_file_is_usage_error(tmp_path):
    missing = tmp_path / "nope.js"
    proc = sf(str(missing), "--vars", "{}")
    assert proc.returncode == 2
    assert "nope.js" in proc.stderr, proc.stderr


def test_missing_vars_defaults_or_usage_error(script):
    # --vars is part of the documented command line; without it the CLI either runs with empty input
    # or refuses with a usage error, never a traceback
    proc = sf(script("function main(d) { return 1; }"))
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("header", ["key,value\n", ""])
def test_userspace_csv(script, tmp_path, header):
    csv = tmp_path / "dnc.csv"
    csv.write_text(header + "15551234567,blocked\n15550001111,fraud\n")
    src = """async function main(d) {
      try { return await api.lookup.userspaceLookup('DNC', d.n); } catch (e) { return e; }
    }"""
    path = script(src)
    hit = sf(path, "--vars", '{"n": "15550001111"}', "--userspace", f"DNC={csv}")
    assert hit.returncode == 0, hit.stderr
    assert outcome(hit)["response"] == "fraud"
    miss = sf(path, "--vars", '{"n": "key"}', "--userspace", f"DNC={csv}")
    assert outcome(miss)["response"] == [404, "Not Found"]


def test_userspace_csv_keys_only(script, tmp_path):
    csv = tmp_path / "keys.csv"
    csv.write_text("key\n15551234567\n")
    other = tmp_path / "other.csv"
    other.write_text("15559990000,x\n")
    src = """async function main(d) {
      const L = api.lookup.userspaceLookup;
      const r = [];
      for (const [a, k] of [['DNC', '15551234567'], ['DNC', 'key'], ['VIP', '15559990000']]) {
        try { await L(a, k); r.push('hit'); } catch (e) { r.push(e[0]); }
      }
      return r;
    }"""
    proc = sf(script(src), "--vars", "{}", "--userspace", f"DNC={csv}", "--userspace", f"VIP={other}")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc)["response"] == ["hit", 404, "hit"]


def test_now_sets_date(script):
    path = script("function main() { return [Date.now(), new Date().toISOString()]; }")
    proc = sf(path, "--vars", "{}", "--now", "2024-01-02T03:04:05Z")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc)["response"] == [1704164645000, "2024-01-02T03:04:05.000Z"]


def test_call_id_seeds_random(script):
    path = script("function main() { return [Math.random(), Math.random()]; }")
    a = outcome(sf(path, "--vars", "{}", "--call-id", "abc", "--now", "2024-01-02T03:04:05Z"))
    b = outcome(sf(path, "--vars", "{}", "--call-id", "abc", "--now", "2024-01-02T03:04:05Z"))
    c = outcome(sf(path, "--vars", "{}", "--call-id", "xyz", "--now", "2024-01-02T03:04:05Z"))
    assert a["response"] == b["response"]
    assert a["response"] != c["response"]


def test_function_with_driver(script):
    path = script(
        "module.exports = { a: function () { return 'A'; }, b: function (d) { return 'B' + d.x; } };"
    )
    proc = sf(path, "--vars", '{"x": 1}', "--type", "driver", "--function", "b")
    assert proc.returncode == 0, proc.stderr
    assert outcome(proc)["response"] == "B1"
    missing = sf(path, "--vars", "{}", "--type", "driver", "--function", "zzz")
    assert missing.returncode == 1
    assert outcome(missing)["reason"] == "not_found"


def test_type_script_has_no_api(script):
    path = script("function main() { return typeof api; }")
    assert outcome(sf(path, "--vars", "{}", "--type", "script"))["response"] == "undefined"
    assert outcome(sf(path, "--vars", "{}"))["response"] == "object"  # default type: app


def test_bad_type_is_usage_error(script):
    proc = sf(script("function main() { return 1; }"), "--vars", "{}", "--type", "lambda")
    assert proc.returncode == 2


def test_syntax_error_line_column(script):
    proc = sf(script("function main(d) {\n  var x = 1;\n  var y = @;\n  return y;\n}\n"), "--vars", "{}")
    assert proc.returncode == 1
    out = outcome(proc)
    assert (out["status"], out["reason"], out["line"], out["column"]) == ("error", "syntax", 3, 11)


def test_timeout_ms(script):
    proc = sf(script("function main() { while (true) {} }"), "--vars", "{}", "--timeout-ms", "300")
    assert proc.returncode == 1
    assert outcome(proc)["reason"] == "timeout"


def test_memory_mb(script):
    src = "function main() { var a = []; while (true) a.push(new Array(1000)); }"
    proc = sf(script(src), "--vars", "{}", "--memory-mb", "20", "--timeout-ms", "5000")
    assert proc.returncode == 1
    assert outcome(proc)["reason"] == "memory"


def test_any_string_a_script_makes_prints_a_valid_outcome(script):
    # a lone UTF-16 surrogate, and a log line cut at its limit in the middle of a pair
    src = "function main() { console.log('a'.repeat(1999) + '\\ud83d\\ude00'); return 'x\\ud800y'; }"
    proc = sf(script(src), "--vars", "{}")
    assert proc.returncode == 0, proc.stderr
    out = outcome(proc)
    assert out["response"] == "x\ufffdy"
    assert out["logs"] == [{"level": "log", "message": "a" * 1999 + "…"}]


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [("--memory-mb", "100000", "512"), ("--memory-mb", "2", "8"), ("--timeout-ms", "3600000", "30000")],
)
def test_limits_out_of_bounds_are_usage_errors(script, flag, value, says):
    proc = sf(script("function main() { return 1; }"), "--vars", "{}", flag, value)
    assert proc.returncode == 2, proc.stdout
    assert flag in proc.stderr and says in proc.stderr, proc.stderr


def test_deploy_refuses_limits_out_of_bounds_before_reaching_kafka(script):
    # no broker is needed to refuse them: the check comes first
    deploy = [
        *COMMAND,
        "deploy",
        script("function main() { return 1; }"),
        "--name",
        "big",
        "--memory-mb",
        "4096",
    ]
    proc = subprocess.run(deploy, capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stdout
    assert "--memory-mb" in proc.stderr and "512" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- --datastore

COUNTER = """
async function main() {
  const n = await datastore.incr('calls');
  await datastore.set('last', {n: n});
  await datastore.delete('old');
  return n;
}
"""


def test_datastore_seeds_the_run_and_the_outcome_shows_what_it_changed(script, tmp_path):
    state = tmp_path / "state.json"
    state.write_text('{"calls": 41, "old": "x", "kept": [1, 2]}')
    proc = sf(script(COUNTER), "--datastore", str(state))
    assert proc.returncode == 0, proc.stderr
    out = outcome(proc)
    assert out["response"] == 42
    assert out["datastore"] == {"set": {"calls": 42, "last": {"n": 42}}, "deleted": ["old"]}


def test_a_failed_run_changes_nothing_in_the_seeded_datastore(script, tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{}")
    proc = sf(
        script("async function main() { await datastore.set('k', 1); throw new Error('no'); }"),
        "--datastore",
        str(state),
    )
    assert proc.returncode == 1, proc.stderr
    assert outcome(proc)["datastore"] == {"set": {}, "deleted": []}


def test_without_datastore_the_outcome_has_no_datastore_field(script):
    proc = sf(script(COUNTER))
    assert proc.returncode == 0, proc.stderr
    assert "datastore" not in outcome(proc)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("[1, 2]", "must be a JSON object of key -> value, not list"),
        ("{not json", "not JSON"),
        ('{"": 1}', "a key has 1 to 256 characters"),
        ('{"deep": ' + "[" * 70 + "]" * 70 + "}", "nested deeper than 64 levels"),
    ],
)
def test_a_bad_datastore_file_is_a_usage_error_naming_the_file_and_the_problem(
    script, tmp_path, content, says
):
    state = tmp_path / "state.json"
    state.write_text(content)
    proc = sf(script(COUNTER), "--datastore", str(state))
    assert proc.returncode == 2, proc.stdout
    assert f"--datastore {state}" in proc.stderr and says in proc.stderr, proc.stderr


def test_a_missing_datastore_file_is_a_usage_error(script, tmp_path):
    proc = sf(script(COUNTER), "--datastore", str(tmp_path / "missing.json"))
    assert proc.returncode == 2
    assert "cannot read it" in proc.stderr
