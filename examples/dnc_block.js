// Rejects calls to numbers on the customer's do-not-call list, otherwise adds a header.
async function main(data) {
  const dest = data.routing.dest_number;
  try {
    await api.lookup.userspaceLookup('DNC', dest);
    throw [603, 'Denied (DNC)'];
  } catch (e) {
    if (e[0] !== 404) throw e;
  }
  console.log('routing', dest);
  data.routing.headers = [{ key: 'X-Screened', value: 'yes' }];
  return data;
}
