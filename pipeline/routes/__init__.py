"""Route assignments: which script a customer's ingress route runs, and what the routing engine does
with its answer (docs/routes.md).

- ``assignment``: building and checking a route (names, timeout, timeout action, TOML variables);
- ``table``: the compacted routes topic, read whole into memory, and its writes;
- ``decision``: the RoutingDecision and the pure rules that turn a script's outcome into one;
- ``call``: one routed call, as the routing engine makes it;
- ``sip``: what of a decision's routing may go into a SIP message (a SIP proxy's checks).
"""
