// A routing script for the replay walk-through (docs/replay.md): refuses numbers on the account's DNC
// list, counts each caller's calls in the datastore, and tags the call for the carrier.
async function main(data) {
  const r = data.routing;
  const calls = await datastore.incr('calls:' + r.cli, 1, 3600);
  const dnc = await api.lookup.userspaceLookup('DNC', r.dest_number).catch(() => null);
  if (dnc) throw [603, 'Denied (DNC)'];
  r.tag = 'sf-' + Math.floor(Math.random() * 1e6);
  r.routed_at = new Date().toISOString();
  r.caller_calls = calls;
  return data;
}
