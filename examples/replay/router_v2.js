// Version 2 of router.js (docs/replay.md): a caller who has called more than 5 times within the hour
// is now refused with 486 Busy Here; everything else is unchanged.
async function main(data) {
  const r = data.routing;
  const calls = await datastore.incr('calls:' + r.cli, 1, 3600);
  const dnc = await api.lookup.userspaceLookup('DNC', r.dest_number).catch(() => null);
  if (dnc) throw [603, 'Denied (DNC)'];
  if (calls > 5) throw [486, 'Busy Here'];
  r.tag = 'sf-' + Math.floor(Math.random() * 1e6);
  r.routed_at = new Date().toISOString();
  r.caller_calls = calls;
  return data;
}
