"""The scripts the experiments deploy, the variables they are called with, and their names.

Normal traffic runs a routing script (the shape of ``sandbox.bench.ROUTING_SCRIPT``) that answers
with a few fields rather than echoing its input, so a request with 900 KB of variables still has a
small reply: what is measured is the request's way in, not the reply limit. The hostile account's
scripts each attack one resource: CPU (a loop), memory (a bomb), the error path (a throw).

Script names are chosen so that the normal scripts land on distinct partitions of the invocations
topic (librdkafka's default partitioner is CRC-32 of the key modulo the partition count): a fault on
one partition then touches one script, and each worker owns some of them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

ROUTING = """
async function main(data) {
  const r = data.routing;
  if (r.dest_number.startsWith('1900')) throw new Error('403 Premium numbers barred');
  const egress = r.egress_routing.filter(function (d) { return d.gw; });
  return { dest: r.dest_number, egress: egress.length, headers: (r.headers || []).length, n: data.n };
}
"""

SPIN = "function main() { while (true) {} }"
BOMB = "function main() { var a = []; while (true) { a.push(new Array(1e6).fill(7)); } }"
THROWS = "function main() { throw new Error('hostile: always fails'); }"

NORMAL_ACCOUNTS = ("acme", "globex")
HOSTILE_ACCOUNT = "mallory"
HOSTILE = {"spin": SPIN, "bomb": BOMB, "throws": THROWS}


@dataclass(frozen=True)
class ScriptRef:
    """A deployed script as a request names it."""

    account: str
    name: str


def partition_of(key: str, partitions: int) -> int:
    """The partition librdkafka's default (consistent_random) partitioner gives a non-empty key."""
    return zlib.crc32(key.encode()) % partitions


def spread_names(prefix: str, count: int, partitions: int) -> list[str]:
    """``count`` names starting with ``prefix``, on distinct partitions as far as there are enough."""
    names: list[str] = []
    taken: set[int] = set()
    suffix = 0
    while len(names) < count:
        name = f"{prefix}{suffix}"
        suffix += 1
        part = partition_of(name, partitions)
        if part in taken and len(taken) < partitions:
            continue
        taken.add(part)
        names.append(name)
    return names


def normal_scripts(count: int, partitions: int) -> list[ScriptRef]:
    """``count`` routing scripts over the normal accounts, spread over the partitions."""
    names = spread_names("route-", count, partitions)
    return [ScriptRef(NORMAL_ACCOUNTS[i % len(NORMAL_ACCOUNTS)], name) for i, name in enumerate(names)]


def hostile_scripts() -> list[ScriptRef]:
    return [ScriptRef(HOSTILE_ACCOUNT, name) for name in HOSTILE]


def routing_vars(n: int, size: int = 0) -> dict[str, Any]:
    """A routing call's variables (about 500 bytes of JSON); ``size`` > 0 pads them with SIP headers to
    about that many bytes, as a call carrying many or long headers would."""
    data: dict[str, Any] = {
        "n": n,
        "routing": {
            "dest_number": "15551234567",
            "cli": "15557654321",
            "account_id": "acme",
            "server": "sbc-1",
            "src_ip": "192.0.2.10",
            "headers": [{"key": "P-Asserted-Identity", "value": "<sip:+15557654321@sip.example.net>"}],
            "egress_routing": [
                {"gw": {"gw1": {"cli": "15557654321", "host": "198.51.100.1"}}, "headers": []},
                {"gw": {"gw2": {"cli": "15557654321", "host": "198.51.100.2"}}},
                {"cause": 503},
            ],
        },
    }
    if size > 0:
        data["routing"]["headers"].extend(_padding(size))
    return data


def _padding(size: int, chunk: int = 1000) -> list[dict[str, str]]:
    """SIP-like headers of about ``size`` bytes of JSON in all (each about ``chunk`` bytes)."""
    per_header = chunk + 30  # the key, the quotes and braces around the value
    count = max(1, size // per_header)
    return [{"key": f"X-Pad-{i}", "value": "v" * chunk} for i in range(count)]
