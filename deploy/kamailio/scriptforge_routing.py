"""Kamailio KEMI routing (app_python3): each new INVITE asks ScriptForge for a RoutingDecision and
applies it; calls are relayed statefully to one next hop; a finished call is reported as a CDR.

The mapping from a SIP request to a ScriptForge call (docs/kamailio.md), all from the environment:

- customer: the From user, or the header named by SCRIPTFORGE_SIP_CUSTOMER_HEADER when it is set;
- route: SCRIPTFORGE_SIP_ROUTE (``default``), or the header SCRIPTFORGE_SIP_ROUTE_HEADER when present;
- account: SCRIPTFORGE_SIP_ACCOUNT (``default``);
- routing: ``{"dest_number": R-URI user, "cli": From user, "headers": {name: value}}`` with the
  headers listed in SCRIPTFORGE_SIP_HEADERS (comma separated) that the INVITE carries.

Next hop: SCRIPTFORGE_SIP_NEXT_HOP (``127.0.0.1:5080``). SCRIPTFORGE_SIP_BYPASS=1 relays every call
without asking ScriptForge (the benchmark's baseline).

Kamailio loads this file in its main process and forks its workers afterwards: nothing here connects
to Kafka at import time; sf_client creates its client in each worker (at its start, or on first use).
"""

from __future__ import annotations

import os
import time
from typing import Any

import KSR  # type: ignore[import-not-found]  # provided by app_python3 inside Kamailio only
import sf_client

from pipeline.routes.sip import RoutingRefusedError, reason_phrase, sip_edits

CUSTOMER_HEADER = os.environ.get("SCRIPTFORGE_SIP_CUSTOMER_HEADER", "")
ROUTE = os.environ.get("SCRIPTFORGE_SIP_ROUTE", "default")
ROUTE_HEADER = os.environ.get("SCRIPTFORGE_SIP_ROUTE_HEADER", "")
ACCOUNT = os.environ.get("SCRIPTFORGE_SIP_ACCOUNT", "default")
HEADERS = [h.strip() for h in os.environ.get("SCRIPTFORGE_SIP_HEADERS", "").split(",") if h.strip()]
NEXT_HOP = os.environ.get("SCRIPTFORGE_SIP_NEXT_HOP", "127.0.0.1:5080")
BYPASS = os.environ.get("SCRIPTFORGE_SIP_BYPASS", "") in ("1", "true", "yes")
#: connect each worker to Kafka when it starts, so no caller pays for it (off: on the first call)
WARM_UP = os.environ.get("SCRIPTFORGE_SIP_WARM_UP", "1") in ("1", "true", "yes")


def _pv(name: str) -> str:
    value = KSR.pv.get(name)
    return "" if value is None else str(value)


class Handler:
    """The object app_python3 calls: ``ksr_request_route`` per request, the failure route by name."""

    def child_init(self, rank: int) -> int:
        # rank > 0: a SIP worker (the main process is 0, the timer and others are negative)
        if rank <= 0:
            return 0
        if WARM_UP and not BYPASS:
            problem = sf_client.warm_up()
            if problem:
                # the worker starts anyway: its calls are answered 500 until the client starts
                KSR.warn(f"scriptforge: not connected at start ({problem}); the next call tries again\n")
        # run.sh start counts these lines: Kamailio listens before its workers are ready, and a call
        # that comes meanwhile waits in the socket's buffer for as long as the warm-up takes
        KSR.info(f"scriptforge: worker {rank} ready\n")
        return 0

    # ---- requests --------------------------------------------------------------------------------
    def ksr_request_route(self, msg: Any) -> int:
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return 1
        method = _pv("$rm")
        if method == "CANCEL":
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return 1
        if _pv("$tt"):  # a To tag: a request inside a dialog
            return self._in_dialog(method)
        if method == "ACK":  # an ACK of a negative reply: tm absorbs it
            KSR.tm.t_check_trans()
            return 1
        if method == "OPTIONS":
            KSR.sl.sl_send_reply(200, "OK")
            return 1
        if method != "INVITE":
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return 1
        if KSR.tm.t_check_trans() == 0:  # a retransmission of an INVITE another worker holds
            return 1
        return self._invite()

    def _in_dialog(self, method: str) -> int:
        if KSR.rr.loose_route() > 0:
            if method == "BYE":
                self._report_bye()
            KSR.tm.t_relay()
            return 1
        if method == "ACK" and KSR.tm.t_check_trans() > 0:
            KSR.tm.t_relay()
            return 1
        KSR.sl.sl_send_reply(404, "Not Here")
        return 1

    def _invite(self) -> int:
        # the transaction first: ScriptForge may take up to the route's timeout, and the caller's
        # retransmissions must meet this transaction instead of starting a second call
        KSR.tm.t_newtran()
        KSR.tm.t_reply(100, "Trying")
        dest, cli = _pv("$rU"), _pv("$fU")
        if not BYPASS:
            decision = sf_client.route(
                self._customer(), self._route(), self._routing(dest, cli), account=ACCOUNT
            )
            KSR.info(f"scriptforge: {dest} from {cli}: {decision}\n")
            if KSR.tm.t_is_canceled() > 0:
                # the caller sent CANCEL while this worker waited: tm has answered it 487 already,
                # and the call must not be relayed (nor answered again): the transaction is released
                # to its wait timer, which absorbs the caller's ACK
                KSR.tm.t_release()
                return 1
            if decision.get("action") != "continue":
                KSR.tm.t_reply(int(decision.get("code") or 500), reason_phrase(decision.get("message")))
                return 1
            problem = self._apply(decision.get("routing"), dest, cli)
            if problem:
                KSR.err(f"scriptforge: routing not applied ({problem})\n")
                KSR.tm.t_reply(500, "ScriptForge Error (routing)")
                return 1
            dest, cli = _pv("$rU"), self._new_cli or cli
        self._relay(dest, cli)
        return 1

    def _customer(self) -> str:
        if CUSTOMER_HEADER:
            return _pv(f"$hdr({CUSTOMER_HEADER})")
        return _pv("$fU")

    def _route(self) -> str:
        if ROUTE_HEADER:
            return _pv(f"$hdr({ROUTE_HEADER})") or ROUTE
        return ROUTE

    def _routing(self, dest: str, cli: str) -> dict[str, Any]:
        headers = {}
        for name in HEADERS:
            value = KSR.pv.get(f"$hdr({name})")
            if value is not None:
                headers[name] = str(value)
        return {"dest_number": dest, "cli": cli, "headers": headers}

    _new_cli = ""

    def _apply(self, routing: Any, dest: str, cli: str) -> str:
        """Apply what the script changed; '' when done, else why nothing was applied (the checks are
        pipeline/routes/sip.py: all of the routing is checked before any of it is applied)."""
        self._new_cli = ""
        try:
            edits = sip_edits(routing, dest, cli, self._routing(dest, cli)["headers"])
        except RoutingRefusedError as exc:
            return str(exc)
        if edits.dest_number is not None:
            KSR.pv.sets("$rU", edits.dest_number)
        if edits.cli is not None:
            # uac rewrites From and (restore_mode auto) restores it towards the caller
            KSR.uac.uac_replace_from("", f"sip:{edits.cli}@{_pv('$fd')}")
            self._new_cli = edits.cli
        for name, value in edits.headers:
            KSR.hdr.remove(name)
            if value is not None:
                KSR.hdr.append(f"{name}: {value}\r\n")
        return ""

    def _relay(self, dest: str, cli: str) -> None:
        KSR.pv.sets("$du", f"sip:{NEXT_HOP}")
        KSR.dialog.dlg_manage()
        KSR.pv.sets("$dlg_var(sf_dest)", dest)
        KSR.pv.sets("$dlg_var(sf_cli)", cli)
        KSR.pv.sets("$avp(sf_dest)", dest)
        KSR.pv.sets("$avp(sf_cli)", cli)
        KSR.rr.record_route()
        KSR.tm.t_on_failure("ksr_failure_cdr")
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    # app_python3 looks these up on the handler for every relayed request and every reply; when
    # one is missing it leaves an AttributeError set, which fails the next Python call (the relay)
    def ksr_onsend_route(self, msg: Any) -> int:
        return 1

    def ksr_reply_route(self, msg: Any) -> int:
        return 1

    # ---- the call's end: CDRs --------------------------------------------------------------------
    def ksr_failure_cdr(self, msg: Any) -> int:
        """The next hop's winning final reply was a failure (or none came: 408)."""
        code = int(_pv("$T_reply_code") or 408)
        problem = sf_client.cdr(_pv("$avp(sf_dest)"), code, account=ACCOUNT, cli=_pv("$avp(sf_cli)"))
        if problem:
            KSR.warn(f"scriptforge: CDR not reported: {problem}\n")
        return 1

    def _report_bye(self) -> None:
        dest = _pv("$dlg_var(sf_dest)")
        if not dest:
            return  # not a dialog this proxy set up (or the dialog module lost it)
        start = _pv("$dlg(start_ts)")
        duration = max(time.time() - int(start), 0.0) if start.isdigit() and int(start) > 0 else 0.0
        problem = sf_client.cdr(dest, 200, duration_s=duration, account=ACCOUNT, cli=_pv("$dlg_var(sf_cli)"))
        if problem:
            KSR.warn(f"scriptforge: CDR not reported: {problem}\n")


def mod_init() -> Handler:
    return Handler()
