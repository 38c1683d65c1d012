// The ScriptForge runtime inside one QuickJS context: the script API of SCRIPT-API.md.
//
// Evaluated once per warm context, before the customer's code. It keeps its own references to the
// built-ins it relies on, so a script that tampers with globals (JSON, Promise, prototypes) can break
// only its own results, never the protocol with the host. The host (sandbox/runner.py) drives a run
// through the functions on `__sf`: start, takeCalls, settle, finish, and decides when a run is over.
(function (global, scriptType, envJson, logLimits) {
  'use strict';
  const JSONparse = JSON.parse;
  const JSONstringify = JSON.stringify;
  const isArray = Array.isArray;
  const PromiseCtor = Promise;
  const promiseThen = Promise.prototype.then;
  const promiseResolve = Promise.resolve;
  const promiseReject = Promise.reject;
  const RealDate = Date;
  const defineProperty = Object.defineProperty;
  const objectKeys = Object.keys;
  const StringCtor = String;
  const ErrorCtor = Error;
  const InternalErrorCtor = typeof InternalError === 'function' ? InternalError : Error;
  const MAX_DEPTH = 1000;
  // Host calls one run may make; the next one fails the run (sandbox/types.py says why).
  const MAX_HOST_CALLS = __SF_MAX_HOST_CALLS__;
  // Reflect.apply and the methods below are captured now, so a script that replaces
  // Function.prototype.call, Array.prototype.push or String.prototype.slice later cannot reach us.
  const apply = Reflect.apply;
  const construct = Reflect.construct;
  const regexpExec = RegExp.prototype.exec;
  const stringSlice = String.prototype.slice;
  const arraySlice = Array.prototype.slice;
  const objectToString = Object.prototype.toString;
  const hasOwn = Object.prototype.hasOwnProperty;
  const NumberCtor = Number;
  const isInteger = Number.isInteger;
  const createNull = Object.create;
  function args(list) { return apply(arraySlice, list, []); }
  function append(list, item) { list[list.length] = item; }

  // Per-run state. `run.id` guards every callback: anything left from an earlier run is inert.
  let run = { id: 0, done: true };
  let nextCallId = 0;
  const waiting = createNull(null); // host call id -> {resolve, reject, runId}

  function describe(value) {
    if (value === undefined) return 'undefined';
    if (value === null) return 'null';
    if (typeof value === 'string') return value;
    if (typeof value === 'symbol') return value.toString();
    if (value instanceof ErrorCtor) {
      const name = value.name && value.name !== 'Error' ? value.name + ': ' : '';
      return name + StringCtor(value.message);
    }
    if (typeof value === 'object') {
      try {
        const text = JSONstringify(value);
        if (text !== undefined && text !== '{}') return text;
      } catch (e) { /* fall through */ }
    }
    try { return StringCtor(value); } catch (e) { return apply(objectToString, value, []); }
  }

  // Checks nesting without recursion: QuickJS's own JSON.stringify recurses natively and can
  // overflow the C stack (SIGSEGV) on a deeply nested value, under any limit.
  function tooDeep(value) {
    if (value === null || typeof value !== 'object') return false;
    const values = [value];
    const depths = [1];
    let top = 1;
    let seen = 0;
    while (top > 0) {
      top--;
      const v = values[top];
      const depth = depths[top];
      if (depth > MAX_DEPTH) return true;
      if (++seen > 2000000) return false; // large but flat: let the memory limit judge it
      const keys = isArray(v) ? null : objectKeys(v);
      const n = keys === null ? v.length : keys.length;
      for (let i = 0; i < n; i++) {
        const c = keys === null ? v[i] : v[keys[i]];
        if (c !== null && typeof c === 'object') { values[top] = c; depths[top] = depth + 1; top++; }
      }
    }
    return false;
  }

  function safeStringify(value, replacer, space) {
    if (tooDeep(value)) throw new RangeError('value nested deeper than ' + MAX_DEPTH + ' levels');
    return JSONstringify(value, replacer, space);
  }
  defineProperty(JSON, 'stringify', { value: safeStringify, writable: true, configurable: true });

  const SIP_PATTERN = /^([1-6]\d\d)(?:\s+([\s\S]*))?$/;

  // ---- completion -------------------------------------------------------------------------
  function sipError(e) {
    // [code, message] / '404 Not Found' / Error('404 Not Found'); anything else is a 500.
    if (isArray(e) && e.length > 0) {
      const code = NumberCtor(e[0]);
      if (isInteger(code) && code >= 100 && code <= 699) {
        return { kind: 'script', code: code, message: e.length > 1 ? describe(e[1]) : '' };
      }
      return { kind: 'runtime', code: 500, message: describe(e.length > 1 ? e[1] : e[0]) };
    }
    let text;
    if (typeof e === 'string') text = e;
    else if (e instanceof ErrorCtor) text = StringCtor(e.message);
    if (text !== undefined) {
      const m = apply(regexpExec, SIP_PATTERN, [text]);
      if (m) return { kind: 'script', code: Number(m[1]), message: m[2] || '' };
    }
    return { kind: 'runtime', code: 500, message: describe(e) };
  }

  function completeOk(runId, value) {
    if (run.id !== runId || run.done) return;
    run.done = true;
    run.result = { ok: true, value: value === undefined ? null : value };
  }

  function completeError(runId, e) {
    if (run.id !== runId || run.done) return;
    run.done = true;
    // The engine's out-of-memory error is catchable; whoever caught it, the run hit its memory limit.
    if (e instanceof InternalErrorCtor && e.message === 'out of memory') {
      run.result = { ok: false, error: { kind: 'memory', code: 500, message: 'run exceeded its memory limit' } };
      return;
    }
    run.result = { ok: false, error: sipError(e) };
  }

  // ---- console ---------------------------------------------------------------------------
  function makeConsole() {
    const out = {};
    ['log', 'info', 'warn', 'error', 'debug'].forEach(function (level) {
      out[level] = function () {
        if (run.done) return;
        if (run.logs.length >= logLimits.entries) { run.logsDropped++; return; }
        let text = '';
        for (let i = 0; i < arguments.length; i++) {
          if (i) text += ' ';
          text += describe(arguments[i]);
          if (text.length > logLimits.chars) break;
        }
        if (text.length > logLimits.chars) text = apply(stringSlice, text, [0, logLimits.chars]) + '…';
        append(run.logs, { level: level === 'debug' ? 'log' : level, message: text });
      };
    });
    return out;
  }

  // ---- determinism: frozen clock, seeded random --------------------------------------------
  let nowMs = 0;
  function FrozenDate() {
    if (!new.target) return new RealDate(nowMs).toString();
    return construct(RealDate, arguments.length === 0 ? [nowMs] : args(arguments), new.target);
  }
  FrozenDate.prototype = RealDate.prototype;
  FrozenDate.now = function () { return nowMs; };
  FrozenDate.parse = RealDate.parse;
  FrozenDate.UTC = RealDate.UTC;
  defineProperty(RealDate.prototype, 'constructor', { value: FrozenDate, writable: true, configurable: true });

  // xoshiro128** seeded by the host from the call id and timestamp.
  let s0 = 1, s1 = 2, s2 = 3, s3 = 4;
  function rotl(x, k) { return (x << k) | (x >>> (32 - k)); }
  function random() {
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = rotl(s3, 11);
    return result / 4294967296;
  }

  // ---- host calls --------------------------------------------------------------------------
  function hostCall(method, params) {
    const runId = run.id;
    if (run.done) return new PromiseCtor(function () {});
    if (run.callsMade >= MAX_HOST_CALLS) {
      // the run fails rather than the call (a rejection can be swallowed, and a routing script past its
      // budget of lookups must not pass for one that routed); the throw ends a synchronous loop of calls
      const message = 'the run made more than ' + MAX_HOST_CALLS + ' host calls, the limit of one run';
      run.done = true;
      run.result = failure('runtime', 500, message);
      throw construct(ErrorCtor, [message]);
    }
    run.callsMade++;
    return new PromiseCtor(function (resolve, reject) {
      const id = ++nextCallId;
      waiting[id] = { resolve: resolve, reject: reject, runId: runId };
      append(run.calls, [id, method, params]);
    });
  }

  function sendCall(channel) {
    return function (params) {
      if (run.done) return new PromiseCtor(function () {});
      if (run.outbound.length >= 100) return apply(promiseReject, PromiseCtor, [[429, 'Too many outbound messages in one run']]);
      let copy;
      try { copy = JSONparse(safeStringify(params === undefined ? null : params)); } catch (e) {
        return apply(promiseReject, PromiseCtor, [[400, 'api.send.' + channel + ' needs JSON parameters: ' + describe(e)]]);
      }
      const id = run.outbound.length + 1;
      append(run.outbound, { channel: channel, params: copy });
      return apply(promiseResolve, PromiseCtor, [{ status: 'queued', id: id }]);
    };
  }

  function lookup(name) {
    return function () { return hostCall('lookup.' + name, args(arguments)); };
  }

  function makeApi() {
    return {
      lookup: {
        userspaceLookup: lookup('userspaceLookup'),
        asrplus: lookup('asrplus'),
        tps: lookup('tps'), nnpc: lookup('nnpc'), hlr: lookup('hlr'), lrn: lookup('lrn'), ping: lookup('ping'),
      },
      send: { email: sendCall('email'), sms: sendCall('sms'), notify: sendCall('notify'), sip: sendCall('sip') },
    };
  }

  function makeDatastore() {
    return {
      get: function (key) { return hostCall('datastore.get', [StringCtor(key)]); },
      set: function (key, value, ttl) {
        return hostCall('datastore.set', [StringCtor(key), value === undefined ? null : value, ttl === undefined ? null : ttl]);
      },
      incr: function (key, by, ttl) {
        return hostCall('datastore.incr', [StringCtor(key), by === undefined ? 1 : by, ttl === undefined ? null : ttl]);
      },
      delete: function (key) { return hostCall('datastore.delete', [StringCtor(key)]); },
    };
  }

  function makeRequire(datastore) {
    const kv = {
      get: function (key) { return datastore.get(key); },
      set: function (key, value, ttl) { return datastore.set(key, value, ttl); },
    };
    const ko = {
      get: function (key) { return datastore.get(key); },
      set: function (key, value, ttl) { return datastore.set(key, value, ttl); },
    };
    const cxKV = { kv: kv, ko: ko, incr: function (key, by, expire) { return datastore.incr(key, by, expire); } };
    function userspace(op) {
      return function () { return hostCall('userspace.' + op, args(arguments)); };
    }
    const cxUserspace = {
      create: userspace('create'), read: userspace('read'), update: userspace('update'), delete: userspace('delete'),
    };
    const modules = { cxKV: cxKV, cxUserspace: cxUserspace };
    const missing = { cxRest: 1, cxOriginate: 1, cxCall: 1, cxLookup: 1, axios: 1, moment: 1, lodash: 1, request: 1 };
    return function require(name) {
      if (apply(hasOwn, modules, [name])) return modules[name];
      if (apply(hasOwn, missing, [name])) {
        throw new ErrorCtor("require('" + name + "') is not offered by ScriptForge yet (the hosted product's " +
          'npm whitelist and platform REST helpers are not available); offered: cxKV, cxUserspace');
      }
      throw new ErrorCtor("require('" + name + "'): no such module; offered: cxKV, cxUserspace");
    };
  }

  // ---- globals -----------------------------------------------------------------------------
  delete global.SharedArrayBuffer;
  delete global.Atomics;
  delete global.WeakRef;
  delete global.FinalizationRegistry;
  global.Date = FrozenDate;
  Math.random = random;
  global.console = makeConsole();
  const env = JSONparse(envJson);
  global.process = { env: env };
  const moduleObject = { exports: {} };
  global.module = moduleObject;
  global.exports = moduleObject.exports;

  let currentData = null;
  function vars() { return currentData; }
  global.vars = vars;
  global.exit = function (response) { completeOk(run.id, response); };
  global.err = function (e) { completeError(run.id, e); };

  if (scriptType !== 'script') {
    const datastore = makeDatastore();
    global.api = makeApi();
    global.datastore = datastore;
    global.require = makeRequire(datastore);
  }
  defineProperty(global, 'ctx', {
    configurable: true,
    get: function () { throw new ErrorCtor('ctx (Class 5 programmable voice) is not offered by ScriptForge yet'); },
  });

  function entryFunction(name) {
    if (scriptType === 'driver') {
      const mod = global.module;
      const tables = [mod && mod.exports, mod && mod.export, global.exports];
      for (let i = 0; i < tables.length; i++) {
        const table = tables[i];
        if (table && (typeof table === 'object' || typeof table === 'function') && typeof table[name] === 'function') {
          return table[name];
        }
      }
      return null;
    }
    return typeof global[name] === 'function' ? global[name] : null;
  }

  function driverFunctions() {
    const names = [];
    const tables = [global.module && global.module.exports, global.module && global.module.export];
    for (let i = 0; i < tables.length; i++) {
      const table = tables[i];
      if (table && typeof table === 'object') {
        const keys = objectKeys(table);
        for (let j = 0; j < keys.length; j++) if (typeof table[keys[j]] === 'function') append(names, keys[j]);
      }
    }
    let text = '';
    for (let i = 0; i < names.length; i++) text += (i ? ', ' : '') + names[i];
    return text;
  }

  // ---- the protocol with the host ------------------------------------------------------------
  const sf = {
    // Starts a run. Returns nothing; the host then drains jobs and polls `state`.
    start: function (varsJson, now, seedA, seedB, functionName) {
      // calls of earlier runs that were never answered (queued when the run ended: exit() after a call
      // not awaited, a timeout) can never settle now: without this, each left ~750 bytes behind and a
      // warm context reached its memory limit after some tens of thousands of such runs
      for (const id in waiting) delete waiting[id];
      run = { id: run.id + 1, done: false, result: null, logs: [], logsDropped: 0, calls: [], callsMade: 0, outbound: [],
        returnedUndefined: false, notFound: null };
      const runId = run.id;
      nowMs = now;
      s0 = seedA | 0 || 1; s1 = seedB | 0 || 2; s2 = (seedA ^ 0x9e3779b9) | 0; s3 = (seedB ^ 0x85ebca6b) | 0;
      for (let i = 0; i < 8; i++) random();
      let data;
      try { data = JSONparse(varsJson); } catch (e) {
        run.done = true;
        run.result = { ok: false, error: { kind: 'runtime', code: 400, message: 'invalid input: ' + describe(e) } };
        return;
      }
      currentData = data;
      defineProperty(vars, 'routing', {
        value: data !== null && typeof data === 'object' ? data.routing : undefined,
        writable: true, configurable: true,
      });
      const name = functionName || 'main';
      const fn = entryFunction(name);
      if (fn === null) {
        run.done = true;
        let message = scriptType === 'driver'
          ? "driver has no function '" + name + "' in module.exports (it has: " + (driverFunctions() || 'none') + ')'
          : "script defines no function '" + name + "'";
        run.result = { ok: false, error: { kind: 'not_found', code: 404, message: message } };
        return;
      }
      let returned;
      try {
        returned = apply(fn, undefined, [data]);
      } catch (e) {
        completeError(runId, e);
        return;
      }
      if (returned !== null && (typeof returned === 'object' || typeof returned === 'function') &&
          typeof returned.then === 'function') {
        apply(promiseThen, apply(promiseResolve, PromiseCtor, [returned]), [
          function (v) { completeOk(runId, v); }, function (e) { completeError(runId, e); }]);
      } else if (returned !== undefined) {
        completeOk(runId, returned);
      } else {
        run.returnedUndefined = true;
      }
    },
    // The host calls queued since the last call, as JSON text (empty string when none).
    takeCalls: function () {
      if (run.calls.length === 0) return '';
      const calls = run.calls;
      run.calls = [];
      try { return JSONstringify(calls); } catch (e) {
        // unserialisable arguments: reject those calls instead of breaking the protocol
        for (let i = 0; i < calls.length; i++) {
          settleOne(calls[i][0], false, [400, 'host call arguments are not JSON: ' + describe(e)]);
        }
        return '';
      }
    },
    // Settles host calls: JSON text of [[id, ok, value], ...].
    settle: function (resultsJson) {
      const results = JSONparse(resultsJson);
      for (let i = 0; i < results.length; i++) settleOne(results[i][0], results[i][1], results[i][2]);
    },
    isDone: function () { return run.done; },
    returnedUndefined: function () { return run.returnedUndefined; },
    // Completes a run that has nothing left to wait for (main returned undefined, no exit()).
    finishIdle: function () { completeOk(run.id, null); },
    // Ends a run whose Promise can never settle: nothing is queued and nothing is awaited.
    failIdle: function (message) {
      if (run.done) return;
      run.done = true;
      run.result = { ok: false, error: { kind: 'runtime', code: 500, message: message } };
    },
    abandon: function () { run.done = true; },
    // The result as JSON text: {ok, value} | {ok:false, error:{kind, code, message}}, logs, outbound.
    // The result as JSON text: {"result": {ok, value} | {ok:false, error}, "logs": [...], "outbound": [...]}.
    // Built by concatenation from strings the prelude made, so a tampered prototype (toJSON, say)
    // can reshape the script's own response but never the envelope.
    result: function (maxBytes) {
      let r = run.result || { ok: false, error: { kind: 'runtime', code: 500, message: 'run did not complete' } };
      let head;
      if (r.ok) {
        let value;
        try {
          if (tooDeep(r.value)) {
            r = failure('runtime', 500, 'response nested deeper than ' + MAX_DEPTH + ' levels');
          } else {
            value = JSONstringify(r.value);
            if (value === undefined) value = 'null';
          }
        } catch (e) {
          r = failure('runtime', 500, 'response is not JSON: ' + describe(e));
        }
        if (r.ok) head = '{"ok":true,"value":' + value + '}';
      }
      if (!r.ok) head = errorJson(r.error);
      let logs = '';
      for (let i = 0; i < run.logs.length; i++) {
        logs += (i ? ',' : '') + '{"level":' + JSONstringify(StringCtor(run.logs[i].level)) +
          ',"message":' + JSONstringify(StringCtor(run.logs[i].message)) + '}';
      }
      if (run.logsDropped) {
        logs += (logs ? ',' : '') + '{"level":"warn","message":"[' + run.logsDropped + ' more log lines dropped]"}';
      }
      let outbound = '';
      if (r.ok) {
        for (let i = 0; i < run.outbound.length; i++) {
          let params;
          try { params = JSONstringify(run.outbound[i].params); } catch (e) { params = 'null'; }
          outbound += (i ? ',' : '') + '{"channel":' + JSONstringify(StringCtor(run.outbound[i].channel)) +
            ',"params":' + (params === undefined ? 'null' : params) + '}';
        }
      }
      let text = '{"result":' + head + ',"logs":[' + logs + '],"outbound":[' + outbound + ']}';
      if (text.length > maxBytes) {
        text = '{"result":' + errorJson({ kind: 'memory', code: 500, message: 'response and logs are ' +
          text.length + ' characters, over the limit of ' + maxBytes }) + ',"logs":[],"outbound":[]}';
      }
      return text;
    },
  };

  function failure(kind, code, message) { return { ok: false, error: { kind: kind, code: code, message: message } }; }

  function errorJson(error) {
    return '{"ok":false,"error":{"kind":' + JSONstringify(StringCtor(error.kind)) + ',"code":' +
      (NumberCtor(error.code) || 500) + ',"message":' + JSONstringify(StringCtor(error.message)) + '}}';
  }

  function settleOne(id, ok, value) {
    const w = waiting[id];
    if (!w) return;
    delete waiting[id];
    if (w.runId !== run.id || run.done) return;
    if (ok) w.resolve(value); else w.reject(value);
  }

  defineProperty(global, '__sf', { value: sf, enumerable: false, writable: false, configurable: false });
})(globalThis, __SF_TYPE__, __SF_ENV__, __SF_LOG_LIMITS__);
