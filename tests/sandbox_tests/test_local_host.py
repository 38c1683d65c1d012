"""Unit tests of sandbox/local.py: the in-memory host of local runs, through its sessions.

Covered: datastores are per (account, script name) and user-space lists per (account, list name), so
two accounts never see each other's data; ``load_csv`` loads into one account; writes are buffered
and applied only by ``finish`` with an ok Outcome; the datastore quota (keys and characters) counts
committed entries and the session's own buffered writes, is freed by deletes and overwrites, and holds
across sessions; a session's scope cannot be changed from outside.

The quota limits are monkeypatched to small values in sandbox.local (which imports them by name).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from sandbox import local
from sandbox.host import HostCallError
from sandbox.local import DEFAULT_AREA, LocalHost, LocalSession
from sandbox.types import Invocation, Outcome, Reason, Script

OK = Outcome.success({"routed": True})
FAILED = Outcome.failure(Reason.RUNTIME, 500, "boom")
TIMED_OUT = Outcome.failure(Reason.TIMEOUT, 408, "run exceeded its time limit")


def session(host: LocalHost, account: str = "acme", name: str = "router", **env: str) -> LocalSession:
    script = Script(name=name, source="function main() {}", account=account, env=env)
    return host.session(script, Invocation(vars={}))


def entry_chars(key: str, value: Any) -> int:
    """What one datastore entry counts against the character quota: key and JSON value."""
    return len(key) + len(orjson.dumps(value))


@pytest.fixture
def small_quota(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    limits = SimpleNamespace(keys=3, chars=40)
    monkeypatch.setattr(local, "MAX_DATASTORE_KEYS", limits.keys)
    monkeypatch.setattr(local, "MAX_DATASTORE_CHARS", limits.chars)
    return limits


async def assert_507(coro: Any) -> HostCallError:
    with pytest.raises(HostCallError) as info:
        await coro
    assert info.value.code == 507
    assert "Insufficient Storage" in info.value.message
    return info.value


async def fill(s: LocalSession, count: int, prefix: str = "k") -> None:
    """Buffers ``count`` one-key writes in session ``s``."""
    for i in range(count):
        await s.datastore_set(f"{prefix}{i}", 1, None)


# ---- accounts are separate -----------------------------------------------------------------------
async def test_two_accounts_with_the_same_script_name_have_separate_datastores() -> None:
    host = LocalHost()
    a = session(host, "acme", "router")
    await a.datastore_set("counter", 41, None)
    await a.datastore_incr("counter", 1, None)
    await a.finish(OK)

    b = session(host, "globex", "router")
    assert await b.datastore_get("counter") is None
    assert await b.datastore_incr("counter", 1, None) == 1
    assert await b.datastore_delete("counter") is True  # its own buffered key
    await b.finish(OK)

    assert await session(host, "acme", "router").datastore_get("counter") == 42
    assert host.datastore[("acme", "router")] == {"counter": 42}
    assert ("globex", "router") in host.datastore
    assert "counter" not in host.datastore[("globex", "router")]


async def test_two_scripts_of_one_account_have_separate_datastores() -> None:
    host = LocalHost()
    s = session(host, "acme", "one")
    await s.datastore_set("k", "one's", None)
    await s.finish(OK)
    assert await session(host, "acme", "two").datastore_get("k") is None


async def test_account_delete_does_not_reach_another_account() -> None:
    host = LocalHost()
    for account in ("acme", "globex"):
        s = session(host, account)
        await s.datastore_set("k", account, None)
        await s.finish(OK)
    s = session(host, "globex")
    assert await s.datastore_delete("k") is True
    await s.finish(OK)
    assert await session(host, "acme").datastore_get("k") == "acme"
    assert await session(host, "globex").datastore_get("k") is None


async def test_the_same_list_name_in_two_accounts_is_two_lists() -> None:
    host = LocalHost()
    host.userspace_list("acme", "DNC")["15551234567"] = "acme-blocked"
    host.userspace_list("globex", "DNC")["15551234567"] = "globex-blocked"
    host.userspace_list("acme", "DNC")["15550000001"] = "acme-only"

    a, b = session(host, "acme"), session(host, "globex")
    assert await a.userspace_lookup("DNC", "15551234567") == "acme-blocked"
    assert await b.userspace_lookup("DNC", "15551234567") == "globex-blocked"
    assert await a.userspace_read("DNC", "15550000001") == {"key": "15550000001", "value": "acme-only"}
    assert await b.userspace_read("DNC", "15550000001") is None
    with pytest.raises(HostCallError) as info:
        await b.userspace_lookup("DNC", "15550000001")
    assert info.value.code == 404


async def test_userspace_writes_stay_in_their_account() -> None:
    host = LocalHost()
    host.userspace_list("acme", "L")["shared-name"] = "acme"
    host.userspace_list("globex", "L")["shared-name"] = "globex"

    b = session(host, "globex")
    assert await b.userspace_update("L", "shared-name", "changed") == {
        "key": "shared-name",
        "value": "changed",
    }
    assert await b.userspace_create("L", "new", 1) == {"key": "new", "value": 1}
    await b.finish(OK)
    assert host.userspace_list("acme", "L") == {"shared-name": "acme"}
    assert host.userspace_list("globex", "L") == {"shared-name": "changed", "new": 1}

    b = session(host, "globex")
    assert await b.userspace_delete("L", "shared-name") is True
    await b.finish(OK)
    assert host.userspace_list("acme", "L") == {"shared-name": "acme"}
    assert host.userspace_list("globex", "L") == {"new": 1}


async def test_update_of_a_key_only_another_account_has_is_404() -> None:
    host = LocalHost()
    host.userspace_list("acme", "L")["k"] = "acme"
    b = session(host, "globex")
    with pytest.raises(HostCallError) as info:
        await b.userspace_update("L", "k", "stolen")
    assert info.value.code == 404
    assert await b.userspace_delete("L", "k") is False
    await b.finish(OK)
    assert host.userspace_list("acme", "L") == {"k": "acme"}


async def test_one_argument_lookup_uses_the_scripts_default_list() -> None:
    host = LocalHost()
    host.userspace_list("acme", DEFAULT_AREA)["k"] = "default"
    host.userspace_list("acme", "custom")["k"] = "custom"
    host.userspace_list("globex", DEFAULT_AREA)["k"] = "other account"
    assert await session(host, "acme").userspace_lookup(None, "k") == "default"
    assert await session(host, "acme", USERSPACE_AREA="custom").userspace_lookup(None, "k") == "custom"
    assert await session(host, "globex").userspace_lookup(None, "k") == "other account"


# ---- load_csv ------------------------------------------------------------------------------------
async def test_load_csv_loads_into_that_account_only(tmp_path: Path) -> None:
    path = tmp_path / "dnc.csv"
    path.write_text("key,value\n15551234567,blocked\n 15550001111 ,fraud\n\n15559999999\n,orphan\n")
    host = LocalHost()
    assert host.load_csv("DNC", path, account="acme") == 3
    assert host.userspace_list("acme", "DNC") == {
        "15551234567": "blocked",
        "15550001111": "fraud",
        "15559999999": "15559999999",  # a key-only row: the key is its value
    }
    assert await session(host, "acme").userspace_lookup("DNC", "15551234567") == "blocked"
    assert await session(host, "globex").userspace_read("DNC", "15551234567") is None
    assert host.userspace.get(("globex", "DNC"), {}) == {}
    # the default account is an account like the others
    assert await session(host, "").userspace_read("DNC", "15551234567") is None


def test_load_csv_without_header_and_into_two_accounts(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("a,1\nb,2\n")
    host = LocalHost()
    assert host.load_csv("L", str(path), account="acme") == 2
    assert host.load_csv("L", path, account="globex") == 2
    host.userspace_list("acme", "L")["a"] = "changed"
    assert host.userspace_list("globex", "L") == {"a": "1", "b": "2"}


def test_load_csv_header_is_only_skipped_on_the_first_row(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("x,1\nkey,2\n")
    host = LocalHost()
    assert host.load_csv("L", path, account="acme") == 2
    assert host.userspace_list("acme", "L") == {"x": "1", "key": "2"}


# ---- writes apply only with an ok Outcome --------------------------------------------------------
async def test_writes_are_applied_by_finish_with_an_ok_outcome() -> None:
    host = LocalHost()
    host.userspace_list("acme", "L")["old"] = "v"
    s = session(host)
    await s.datastore_set("k", {"a": 1}, None)
    await s.userspace_create("L", "new", "n")
    await s.userspace_delete("L", "old")
    # nothing is visible outside the session before finish
    other = session(host)
    assert await other.datastore_get("k") is None
    assert await other.userspace_read("L", "old") == {"key": "old", "value": "v"}
    assert host.datastore.get(("acme", "router"), {}) == {}
    # the session reads its own writes
    assert await s.datastore_get("k") == {"a": 1}
    assert await s.userspace_read("L", "new") == {"key": "new", "value": "n"}
    assert await s.userspace_read("L", "old") is None

    await s.finish(OK)
    assert await session(host).datastore_get("k") == {"a": 1}
    assert host.userspace_list("acme", "L") == {"new": "n"}


@pytest.mark.parametrize("outcome", [FAILED, TIMED_OUT, Outcome.failure(Reason.SCRIPT, 486, "Busy")])
async def test_writes_are_dropped_with_an_error_outcome(outcome: Outcome) -> None:
    host = LocalHost()
    host.userspace_list("acme", "L")["old"] = "v"
    first = session(host)
    await first.datastore_set("keep", 1, None)
    await first.finish(OK)

    s = session(host)
    await s.datastore_set("k", 1, None)
    await s.datastore_incr("keep", 5, None)
    await s.datastore_delete("keep")
    await s.userspace_create("L", "new", "n")
    await s.userspace_update("L", "old", "changed")
    await s.finish(outcome)

    assert host.datastore[("acme", "router")] == {"keep": 1}
    assert host.userspace_list("acme", "L") == {"old": "v"}
    assert host.total_chars[("acme", "router")] == entry_chars("keep", 1)


async def test_buffered_delete_then_set_in_one_session() -> None:
    host = LocalHost()
    s = session(host)
    await s.datastore_set("k", 1, None)
    await s.finish(OK)
    s = session(host)
    assert await s.datastore_delete("k") is True
    assert await s.datastore_get("k") is None
    assert await s.datastore_delete("k") is False
    assert await s.datastore_incr("k", 2, None) == 2
    await s.finish(OK)
    assert await session(host).datastore_get("k") == 2


async def test_incr_of_a_value_that_is_not_a_number_is_400() -> None:
    host = LocalHost()
    s = session(host)
    for value in ("text", True, [1], {"n": 1}):
        await s.datastore_set("k", value, None)
        with pytest.raises(HostCallError) as info:
            await s.datastore_incr("k", 1, None)
        assert info.value.code == 400


# ---- datastore quota: keys -----------------------------------------------------------------------
async def test_key_quota_counts_the_sessions_buffered_writes(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    s = session(host)
    await fill(s, small_quota.keys, "k")
    await assert_507(s.datastore_set("one-too-many", 1, None))
    await assert_507(s.datastore_incr("one-too-many", 1, None))
    # overwriting a key it holds takes no new key
    await s.datastore_set("k0", 2, None)
    assert await s.datastore_incr("k1", 1, None) == 2


async def test_key_quota_counts_committed_entries(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    first = session(host)
    for i in range(small_quota.keys - 1):
        await first.datastore_set(f"k{i}", 1, None)
    await first.finish(OK)

    s = session(host)
    await s.datastore_set("last", 1, None)  # committed + this one: exactly the limit
    await assert_507(s.datastore_set("over", 1, None))
    await s.datastore_set("k0", "overwrite", None)  # a committed key: no new key


async def test_delete_frees_a_key_in_the_same_session(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    s = session(host)
    await fill(s, small_quota.keys, "k")
    await s.finish(OK)

    s = session(host)
    await assert_507(s.datastore_set("new", 1, None))
    assert await s.datastore_delete("k0") is True
    await s.datastore_set("new", 1, None)
    await assert_507(s.datastore_set("newer", 1, None))
    # deleting a key the session itself buffered frees it too
    await s.datastore_delete("new")
    await s.datastore_set("newer", 1, None)
    await s.finish(OK)
    assert sorted(host.datastore[("acme", "router")]) == ["k1", "k2", "newer"]


async def test_deletes_are_allowed_when_the_store_is_full(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    s = session(host)
    await fill(s, small_quota.keys, "k")
    await s.datastore_delete("missing")
    await s.datastore_delete("k0")
    await s.finish(OK)
    assert len(host.datastore[("acme", "router")]) == small_quota.keys - 1


async def test_a_refused_write_changes_nothing(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    s = session(host)
    await fill(s, small_quota.keys, "k")
    await assert_507(s.datastore_set("over", 1, None))
    assert await s.datastore_get("over") is None
    await s.finish(OK)
    assert "over" not in host.datastore[("acme", "router")]
    assert len(host.entry_chars[("acme", "router")]) == small_quota.keys


async def test_key_quota_holds_across_sessions(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    for i in range(small_quota.keys):
        s = session(host)
        await s.datastore_set(f"k{i}", 1, None)
        await s.finish(OK)
    await assert_507(session(host).datastore_set("over", 1, None))
    # a delete committed by one session frees the room for the next
    s = session(host)
    await s.datastore_delete("k1")
    await s.finish(OK)
    s = session(host)
    await s.datastore_set("fits", 1, None)
    await s.finish(OK)
    await assert_507(session(host).datastore_set("over", 1, None))


async def test_failed_run_frees_nothing_and_takes_nothing(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    s = session(host)
    await fill(s, small_quota.keys, "k")
    await s.finish(FAILED)
    # the failed run's keys never landed: the store is empty and has room
    s = session(host)
    await fill(s, small_quota.keys, "j")
    await s.finish(OK)
    s = session(host)
    await s.datastore_delete("j0")
    await s.finish(FAILED)
    await assert_507(session(host).datastore_set("over", 1, None))


async def test_quota_is_per_datastore(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    s = session(host, "acme", "router")
    await fill(s, small_quota.keys, "k")
    await s.finish(OK)
    for account, name in (("globex", "router"), ("acme", "other")):
        s = session(host, account, name)
        await fill(s, small_quota.keys, "k")
        await s.finish(OK)


# ---- datastore quota: characters -----------------------------------------------------------------
async def test_char_quota_counts_key_and_json_value(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    s = session(host)
    value = "x" * (small_quota.chars - len("k") - 2)  # plus its quotes and the key: the limit
    assert entry_chars("k", value) == small_quota.chars
    await s.datastore_set("k", value, None)
    await s.finish(OK)
    assert host.total_chars[("acme", "router")] == small_quota.chars
    await assert_507(session(host).datastore_set("j", 0, None))


async def test_char_quota_counts_buffered_and_committed(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    s = session(host)
    await s.datastore_set("a", "x" * 15, None)  # 1 + 17 = 18
    await s.finish(OK)
    s = session(host)
    await s.datastore_set("b", "y" * 15, None)  # 36 with the committed one
    await assert_507(s.datastore_set("c", "zz", None))  # 1 + 4 = 5: 41
    await s.datastore_set("c", "z", None)  # 1 + 3 = 4: exactly 40
    await s.finish(OK)
    assert host.total_chars[("acme", "router")] == small_quota.chars


async def test_overwrite_with_a_smaller_value_frees_characters(small_quota: SimpleNamespace) -> None:
    host = LocalHost()
    s = session(host)
    await s.datastore_set("a", "x" * 30, None)  # 33
    await s.finish(OK)
    s = session(host)
    await assert_507(s.datastore_set("b", "y" * 10, None))  # 13 more: 46
    await s.datastore_set("a", 1, None)  # 2: frees 31
    await s.datastore_set("b", "y" * 10, None)
    await s.finish(OK)
    assert host.total_chars[("acme", "router")] == entry_chars("a", 1) + entry_chars("b", "y" * 10)
    # a larger overwrite is refused when it would not fit
    await assert_507(session(host).datastore_set("a", "x" * 30, None))


async def test_char_quota_holds_across_sessions_and_counts_utf8(
    small_quota: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "MAX_DATASTORE_KEYS", 10)  # only characters limit here
    host = LocalHost()
    for i in range(4):
        s = session(host)
        await s.datastore_set(f"k{i}", "é" * 2, None)  # "é" is 2 bytes of JSON: 2 + 6 = 8
        await s.finish(OK)
    assert host.total_chars[("acme", "router")] == 32
    s = session(host)
    await assert_507(s.datastore_set("k9", "é" * 3, None))  # 10 more: 42
    await s.datastore_delete("k0")
    await s.datastore_set("k9", "é" * 3, None)
    await s.finish(OK)
    assert host.total_chars[("acme", "router")] == 34


async def test_totals_stay_consistent_with_the_entries() -> None:
    host = LocalHost()
    s = session(host)
    await s.datastore_set("a", [1, 2, 3], None)
    await s.datastore_set("b", {"x": "y"}, 60)
    await s.datastore_incr("n", 1.5, None)
    await s.finish(OK)
    s = session(host)
    await s.datastore_set("a", "short", None)
    await s.datastore_delete("b")
    await s.datastore_incr("n", 1, None)
    await s.finish(OK)
    scope = ("acme", "router")
    assert host.datastore[scope] == {"a": "short", "n": 2.5}
    assert host.entry_chars[scope] == {"a": entry_chars("a", "short"), "n": entry_chars("n", 2.5)}
    assert host.total_chars[scope] == sum(host.entry_chars[scope].values())
    assert host.expiry[scope] == {}


# ---- quota findings ------------------------------------------------------------------------------
async def test_expired_keys_free_their_room(
    small_quota: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(local, "time", SimpleNamespace(time=lambda: clock[0]))
    host = LocalHost()
    s = session(host)
    for i in range(small_quota.keys):
        await s.datastore_set(f"k{i}", 1, 10)
    await s.finish(OK)
    clock[0] += 60  # every key has expired
    s = session(host)
    assert [await s.datastore_get(f"k{i}") for i in range(small_quota.keys)] == [None] * small_quota.keys
    await s.datastore_set("new", 1, None)


async def test_expired_key_reads_as_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(local, "time", SimpleNamespace(time=lambda: clock[0]))
    host = LocalHost()
    s = session(host)
    await s.datastore_set("k", 5, 10)
    await s.finish(OK)
    assert host.expiry[("acme", "router")] == {"k": 1_000_010.0}
    assert await session(host).datastore_get("k") == 5
    clock[0] += 10
    s = session(host)
    assert await s.datastore_get("k") is None
    assert await s.datastore_incr("k", 1, None) == 1  # counts again from zero
    await s.finish(OK)
    assert host.expiry[("acme", "router")] == {}  # written without a TTL now


# ---- the session's scope is fixed ----------------------------------------------------------------
def test_session_has_no_dict_and_refuses_unknown_attributes() -> None:
    s = session(LocalHost(), "acme")
    assert not hasattr(s, "__dict__")
    for name in ("scope", "script", "host", "account_id", "_account", "datastore", "area"):
        with pytest.raises(AttributeError):
            setattr(s, name, "globex")


def test_account_is_read_only() -> None:
    s = session(LocalHost(), "acme")
    assert s.account == "acme"
    with pytest.raises(AttributeError):
        s.account = "globex"  # type: ignore[misc]
    assert s.account == "acme"


def test_session_exposes_only_its_host_call_methods_publicly() -> None:
    s = session(LocalHost(), "acme")
    public = {name for name in dir(s) if not name.startswith("_")}
    assert public == {
        "account",
        "asrplus",
        "dataset_lookup",
        "datastore_delete",
        "datastore_get",
        "datastore_incr",
        "datastore_set",
        "finish",
        "userspace_create",
        "userspace_delete",
        "userspace_lookup",
        "userspace_read",
        "userspace_update",
        # read by a recording of the run (sandbox/recording.py); no host call reaches it (METHODS)
        "value_before",
    }


# ---- reference data ------------------------------------------------------------------------------
async def test_dataset_and_asr_lookups() -> None:
    host = LocalHost(datasets={"tps": {"1555": {"registered": True}}})
    s = session(host)
    assert await s.dataset_lookup("tps", "1555") == {"registered": True}
    with pytest.raises(HostCallError) as info:
        await s.dataset_lookup("tps", "1666")
    assert info.value.code == 404
    with pytest.raises(HostCallError) as info:
        await s.dataset_lookup("hlr", "1555")
    assert info.value.code == 501
    assert (await s.asrplus("1555"))["status"] == "Unknown"
    for answered in (False, False, False):
        host.record_call("1555", answered)
    assert (await s.asrplus("1555"))["status"] == "Invalid"
    host.record_call("1555", True)
    view = await s.asrplus("1555")
    shown = {k: view[k] for k in ("number", "status", "attempts", "answered", "asr")}
    assert shown == {"number": "1555", "status": "Valid", "attempts": 4, "answered": 1, "asr": 0.25}
    assert view["last_seen"] is not None and "acd" in view
