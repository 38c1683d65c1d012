// The ScriptForge runtime inside one QuickJS context: the script API of docs/script-api.md.
//
// Evaluated once per warm context, before the customer's code, which then shares the context and may
// redefine any global, prototype or built-in. So this file trusts nothing reachable from the global
// object after it returns:
// - it captures every built-in it uses now, and calls them through Reflect.apply;
// - its own state lives in objects without a prototype, so no read or write of it consults anything
//   the script can define (an index setter on Array.prototype, a getter on Object.prototype);
// - it serialises with a depth count made on the values the engine actually descends into, and it
//   freezes a host call's arguments to JSON text at the moment of the call: what leaves the context is
//   text built by concatenation around that, so no prototype shapes the protocol;
// - its protocol with the host is the value this expression evaluates to: no global names it.
// The host (sandbox/runner.py) drives a run through that protocol and decides when it is over.
(function (global, scriptType, envJson, limits) {
  'use strict';
  const apply = Reflect.apply;
  const construct = Reflect.construct;
  const defineProperty = Object.defineProperty;
  const setPrototypeOf = Object.setPrototypeOf;
  const objectKeys = Object.keys;
  const ObjectProto = Object.prototype;
  const objectToString = ObjectProto.toString;
  const isArray = Array.isArray;
  const arrayJoin = Array.prototype.join;
  const JSONparse = JSON.parse;
  // the engine's own JSON.stringify: applied to primitives alone it quotes strings exactly as JSON
  // does (lone surrogates escaped) and consults no toJSON; to anything else only through serialize
  const nativeStringify = JSON.stringify;
  const quotePrimitive = nativeStringify;
  const WeakMapCtor = WeakMap;
  const weakMapGet = WeakMap.prototype.get;
  const weakMapSet = WeakMap.prototype.set;
  const PromiseCtor = Promise;
  const promiseThen = Promise.prototype.then;
  const promiseResolve = Promise.resolve;
  const promiseReject = Promise.reject;
  const RealDate = Date;
  const StringCtor = String;
  const NumberCtor = Number;
  const isInteger = Number.isInteger;
  const mathImul = Math.imul;
  const ErrorCtor = Error;
  const RangeErrorCtor = RangeError;
  const TypeErrorCtor = TypeError;
  const InternalErrorCtor = typeof InternalError === 'function' ? InternalError : Error;
  const regexpExec = RegExp.prototype.exec;
  const stringSlice = String.prototype.slice;
  const charCodeAt = String.prototype.charCodeAt;
  const symbolToString = Symbol.prototype.toString;
  const arraySlice = Array.prototype.slice;

  // ---- state without prototypes ----------------------------------------------------------------
  function rec(object) { setPrototypeOf(object, null); return object; }
  // A list is a prototype-less object with a length: appending defines an own property, consulting
  // nothing, and Array.prototype.join (captured) reads it as an array-like.
  function list() { return rec({ length: 0 }); }
  function push(l, value) { l[l.length] = value; l.length++; }
  function joined(l, separator) { return apply(arrayJoin, l, [separator]); }
  function args(argumentsObject) { return apply(arraySlice, argumentsObject, []); }

  // ---- serialising -----------------------------------------------------------------------------
  // The engine's JSON.stringify, made safe. QuickJS 2021 recurses in C without a stack check and dies
  // (SIGSEGV) on a deeply nested value, and a value can turn deep behind any check made before the
  // call (toJSON, getters, Proxies). So every serialisation passes a replacer that counts each
  // object's depth as JSON reaches it (its holder's depth + 1, kept in a WeakMap): the count is made on
  // the very value the engine then descends into, and past `maxDepth` it throws a RangeError first.
  // (Measured on a routing response: 2.3 times the bare native call, a third of a serialiser in JS.)
  // A property list (an array replacer) is applied by the same replacer: each object is handed on as
  // a prototype-less copy with exactly the listed keys, in the list's order.
  function serialize(value, replacer, propertyList, space, maxDepth) {
    const depths = new WeakMapCtor();
    let wrapper;
    function track(key, v) {
      if (wrapper === undefined) wrapper = this;
      if (replacer !== undefined) v = apply(replacer, this, [key, v]);
      if (v !== null && typeof v === 'object') {
        const depth = this === wrapper ? 1 : apply(weakMapGet, depths, [this]) + 1;
        if (depth > maxDepth) throw construct(RangeErrorCtor, ['value nested deeper than ' + maxDepth + ' levels']);
        if (propertyList !== undefined && !isArray(v)) v = pick(v, propertyList);
        apply(weakMapSet, depths, [v, depth]);
      }
      return v;
    }
    return nativeStringify(value, track, space);
  }

  function pick(object, names) {
    const copy = rec({});
    for (let i = 0; i < names.length; i++) copy[names[i]] = object[names[i]];
    return copy;
  }

  function propertyListOf(replacer) {
    const names = list();
    const seen = rec({});
    const length = replacer.length;
    for (let i = 0; i < length; i++) {
      let item = replacer[i];
      if (item !== null && typeof item === 'object') {
        const tag = apply(objectToString, item, []);
        if (tag === '[object String]' || tag === '[object Number]') item = StringCtor(item);
      }
      if (typeof item === 'number') item = StringCtor(item);
      if (typeof item === 'string' && seen[item] === undefined) {
        seen[item] = true;
        push(names, item);
      }
    }
    return names;
  }

  // JSON.stringify as scripts see it: the standard semantics, bounded in depth
  function stringify(value, replacer, space) {
    if (typeof replacer === 'function') return serialize(value, replacer, undefined, space, limits.depth);
    if (isArray(replacer)) return serialize(value, undefined, propertyListOf(replacer), space, limits.depth);
    return serialize(value, undefined, undefined, space, limits.depth);
  }

  // ---- describing values (console, error messages) -----------------------------------------------
  // Cuts at `chars` without splitting a surrogate pair (a lone half is not valid text anywhere else).
  function cutText(text, chars) {
    if (text.length <= chars) return text;
    let end = chars;
    const code = apply(charCodeAt, text, [end - 1]);
    if (code >= 0xd800 && code <= 0xdbff) end--;
    return apply(stringSlice, text, [0, end]) + '…';
  }

  function describe(value) {
    if (value === undefined) return 'undefined';
    if (value === null) return 'null';
    const type = typeof value;
    if (type === 'string') return value;
    if (type === 'symbol') return apply(symbolToString, value, []);
    if (type === 'object' && value instanceof ErrorCtor) {
      const name = value.name && value.name !== 'Error' ? StringCtor(value.name) + ': ' : '';
      return name + StringCtor(value.message);
    }
    if (type === 'object') {
      try {
        const text = serialize(value, undefined, undefined, undefined, limits.depth);
        if (text !== undefined && text !== '{}') return text;
      } catch (e) { /* not JSON: its string form below */ }
    }
    try { return StringCtor(value); } catch (e) { return apply(objectToString, value, []); }
  }

  const SIP_PATTERN = /^([1-6]\d\d)(?:\s+([\s\S]*))?$/;
  const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
  const globalEval = eval;

  // ---- completion --------------------------------------------------------------------------------
  function failure(kind, code, message) {
    return rec({ ok: false, kind: kind, code: code, message: cutText(StringCtor(message), limits.messageChars) });
  }

  function sipError(e) {
    // [code, message] / '404 Not Found' / Error('404 Not Found'); anything else is a 500.
    if (isArray(e) && e.length > 0) {
      const code = NumberCtor(e[0]);
      if (isInteger(code) && code >= 100 && code <= 699) {
        return failure('script', code, e.length > 1 ? describe(e[1]) : '');
      }
      return failure('runtime', 500, describe(e.length > 1 ? e[1] : e[0]));
    }
    let text;
    if (typeof e === 'string') text = e;
    else if (e instanceof ErrorCtor) text = StringCtor(e.message);
    if (text !== undefined) {
      const m = apply(regexpExec, SIP_PATTERN, [text]);
      if (m) return failure('script', NumberCtor(m[1]), m[2] || '');
    }
    return failure('runtime', 500, describe(e));
  }

  // Per-run state. `run.id` guards every callback: anything left from an earlier run is inert.
  let run = rec({ id: 0, done: true });
  let nextCallId = 0;
  const waiting = rec({}); // host call id -> {resolve, reject, runId}

  // A run completes once its result is made: the response serialised (so what the script does to the
  // object afterwards, code after exit() in the same function, cannot change what was answered), or the
  // error described. Making it runs script code (toJSON, getters, toString); should that reach the
  // deadline, the engine's interrupt leaves here before the run is marked done, and the host sees the
  // run time out. Should that code complete the run itself first, its completion stands.
  function completeOk(runId, value) {
    if (run.id !== runId || run.done) return;
    let result;
    try {
      let text = serialize(value === undefined ? null : value, undefined, undefined, undefined, limits.depth);
      if (text === undefined) text = 'null';
      result = text.length > limits.responseChars
        ? failure('memory', 500, 'the response is ' + text.length + ' characters, over the limit of ' + limits.responseChars)
        : rec({ ok: true, text: text });
    } catch (e) {
      result = failure('runtime', 500, 'the response is not JSON: ' + describe(e));
    }
    if (run.id !== runId || run.done) return;
    run.done = true;
    run.result = result;
  }

  function completeError(runId, e) {
    if (run.id !== runId || run.done) return;
    let result;
    // The engine's out-of-memory error is catchable; whoever caught it, the run hit its memory limit.
    if (e instanceof InternalErrorCtor && e.message === 'out of memory') {
      result = failure('memory', 500, 'run exceeded its memory limit');
    } else {
      try {
        result = sipError(e);
      } catch (inner) {
        result = failure('runtime', 500, 'the script threw a value that cannot be described');
      }
    }
    if (run.id !== runId || run.done) return;
    run.done = true;
    run.result = result;
  }

  // ---- console -----------------------------------------------------------------------------------
  function makeConsole() {
    const out = {};
    const levels = ['log', 'info', 'warn', 'error', 'debug'];
    for (let k = 0; k < levels.length; k++) {
      const level = levels[k];
      const shown = level === 'debug' ? 'log' : level;
      out[level] = function () {
        if (run.done) return;
        if (run.logs.length >= limits.logEntries) { run.logsDropped++; return; }
        let text = '';
        for (let i = 0; i < arguments.length; i++) {
          if (i) text += ' ';
          const piece = describe(arguments[i]);
          text += piece.length > limits.logChars ? apply(stringSlice, piece, [0, limits.logChars + 1]) : piece;
          if (text.length > limits.logChars) break;
        }
        push(run.logs, '{"level":"' + shown + '","message":' + quotePrimitive(cutText(text, limits.logChars)) + '}');
      };
    }
    return out;
  }

  // ---- determinism: frozen clock, seeded random --------------------------------------------------
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

  // ---- timers on the run's own clock -------------------------------------------------------------
  // A timer fires only when the run has nothing else to do (no job queued, no host call outstanding),
  // the earliest first (ties in the order they were set), and the frozen clock moves to its time:
  // Date.now() advances by the delay, but no real time passes, so a run that waits on a timer costs
  // the caller no post-dial delay, and a re-run fires the same timers at the same clock readings. A
  // timer due after the run's time limit ends the run `timeout`, as waiting for it would. A run ends
  // when its result settles: its timers left pending never fire (nor do top-level code's).
  let runStartMs = 0;
  let timers = list();  // records { id, due (ms from the run's start), fn, args, every, cleared }
  let timersLive = 0;
  let timerSeq = 0;
  function addTimer(fn, ms, extra, repeat) {
    if (typeof fn !== 'function') {
      throw construct(TypeErrorCtor, [(repeat ? 'setInterval' : 'setTimeout') +
        ' needs a function (a string of code is not run)']);
    }
    if (timersLive >= limits.timers) {
      throw construct(RangeErrorCtor, ['more than ' + limits.timers + ' timers pending in one run']);
    }
    let delay = NumberCtor(ms);
    if (!(delay > 0)) delay = 0;  // NaN, negative, missing: at once
    timerSeq++;
    push(timers, rec({ id: timerSeq, due: nowMs - runStartMs + delay, fn: fn, args: extra,
      every: repeat ? (delay >= 1 ? delay : 1) : 0, cleared: false }));
    timersLive++;
    return timerSeq;
  }
  function clearTimer(id) {
    for (let i = 0; i < timers.length; i++) {
      const t = timers[i];
      if (t.id === id && !t.cleared) { t.cleared = true; timersLive--; return; }
    }
  }
  function liveTimers() {
    const kept = list();
    for (let i = 0; i < timers.length; i++) if (!timers[i].cleared) push(kept, timers[i]);
    return kept;
  }
  // 0: no timer pending; 1: one fired; 2: the next is due after limitMs (the run's time limit)
  function fireTimer(limitMs) {
    if (run.done) return 0;
    let next = null;
    for (let i = 0; i < timers.length; i++) {
      const t = timers[i];
      if (!t.cleared && (next === null || t.due < next.due || (t.due === next.due && t.id < next.id))) next = t;
    }
    if (next === null) return 0;
    if (next.due > limitMs) return 2;
    nowMs = runStartMs + next.due;
    if (next.every > 0) {
      next.due += next.every;
    } else {
      next.cleared = true;
      timersLive--;
    }
    timers = liveTimers();
    try { apply(next.fn, undefined, next.args); } catch (e) { completeError(run.id, e); }
    return 1;
  }

  // xoshiro128** seeded by the host from the call id and timestamp.
  let s0 = 1, s1 = 2, s2 = 3, s3 = 4;
  function rotl(x, k) { return (x << k) | (x >>> (32 - k)); }
  function random() {
    const result = mathImul(rotl(mathImul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = rotl(s3, 11);
    return result / 4294967296;
  }

  // ---- host calls --------------------------------------------------------------------------------
  function never() { return new PromiseCtor(function () {}); }
  function rejected(code, message) { return apply(promiseReject, PromiseCtor, [[code, message]]); }

  // Fails the run, not the call: a rejection can be swallowed, and a routing script past its budget
  // of lookups must not pass for one that routed. The throw ends a synchronous loop of calls.
  function overBudget(message) {
    run.done = true;
    run.result = failure('runtime', 500, message);
    throw construct(ErrorCtor, [message]);
  }

  // `params` is an array the prelude made; each argument is frozen to JSON text now (undefined as
  // null), so nothing the script does later, to the value or to a prototype, changes what is sent.
  function hostCall(method, params) {
    const runId = run.id;
    if (run.done) return never();
    if (run.callsMade >= limits.hostCalls) {
      overBudget('the run made more than ' + limits.hostCalls + ' host calls, the limit of one run');
    }
    let text = '';
    try {
      for (let i = 0; i < params.length; i++) {
        const arg = serialize(params[i], undefined, undefined, undefined, limits.valueDepth);
        text += (i ? ',' : '') + (arg === undefined ? 'null' : arg);
      }
    } catch (e) {
      return rejected(400, method + ': the arguments are not JSON: ' + describe(e));
    }
    if (text.length > limits.callChars) {
      return rejected(413, method + ': the arguments are ' + text.length + ' characters of JSON, over the limit of ' + limits.callChars);
    }
    if (run.callChars + text.length > limits.runCallChars) {
      overBudget("the run's host calls carry more than " + limits.runCallChars + ' characters, the limit of one run');
    }
    run.callsMade++;
    run.callChars += text.length;
    return new PromiseCtor(function (resolve, reject) {
      const id = ++nextCallId;
      waiting[id] = rec({ resolve: resolve, reject: reject, runId: runId });
      push(run.calls, '[' + id + ',' + quotePrimitive(method) + ',[' + text + ']]');
    });
  }

  // Keys and numbers may be given as numbers; anything else goes as it is and the host names it.
  function keyArg(value) { return typeof value === 'number' ? StringCtor(value) : value; }

  function sendCall(channel) {
    return function (params) {
      if (run.done) return never();
      if (run.outbound.length >= limits.outbound) return rejected(429, 'Too many outbound messages in one run');
      if (params === undefined) params = null;
      if (params !== null && (typeof params !== 'object' || isArray(params))) {
        return rejected(400, 'api.send.' + channel + ' needs an object of parameters');
      }
      let text;
      try {
        text = serialize(params, undefined, undefined, undefined, limits.valueDepth);
      } catch (e) {
        return rejected(400, 'api.send.' + channel + ' needs JSON parameters: ' + describe(e));
      }
      if (text.length > limits.valueChars) {
        return rejected(413, 'api.send.' + channel + ': the parameters are ' + text.length + ' characters of JSON, over the limit of ' + limits.valueChars);
      }
      push(run.outbound, '{"channel":"' + channel + '","params":' + text + '}');
      return apply(promiseResolve, PromiseCtor, [{ status: 'queued', id: run.outbound.length }]);
    };
  }

  function lookup(name) {
    const method = 'lookup.' + name;
    return function (number) { return hostCall(method, [keyArg(number)]); };
  }

  function makeApi() {
    return {
      lookup: {
        userspaceLookup: function (area, key) {
          // the one-argument form looks in the script's default list
          if (arguments.length < 2) return hostCall('lookup.userspaceLookup', [keyArg(area)]);
          return hostCall('lookup.userspaceLookup', [area, keyArg(key)]);
        },
        asrplus: lookup('asrplus'),
        tps: lookup('tps'), nnpc: lookup('nnpc'), hlr: lookup('hlr'), lrn: lookup('lrn'), ping: lookup('ping'),
      },
      send: { email: sendCall('email'), sms: sendCall('sms'), notify: sendCall('notify'), sip: sendCall('sip') },
    };
  }

  // A value to store (datastore.set, userspace create and update) is sent only when it is defined: as
  // JSON, undefined would arrive as null, which a script may mean to store. Left out, the host names it
  // missing, after checking the arguments before it.
  function makeDatastore() {
    return {
      get: function (key) { return hostCall('datastore.get', [keyArg(key)]); },
      set: function (key, value, ttl) {
        return hostCall('datastore.set', value === undefined ? [keyArg(key)] : [keyArg(key), value, ttl === undefined ? null : ttl]);
      },
      incr: function (key, by, ttl) {
        return hostCall('datastore.incr', [keyArg(key), by === undefined ? 1 : by, ttl === undefined ? null : ttl]);
      },
      delete: function (key) { return hostCall('datastore.delete', [keyArg(key)]); },
    };
  }

  function makeRequire(datastore) {
    const store = {
      get: function (key) { return datastore.get(key); },
      set: function (key, value, ttl) { return datastore.set(key, value, ttl); },
    };
    // kv (values) and ko (objects) are two names of the same store in the hosted product
    const cxKV = { kv: store, ko: store, incr: function (key, by, expire) { return datastore.incr(key, by, expire); } };
    function userspace(op) {
      const method = 'userspace.' + op;
      const writes = op === 'create' || op === 'update';
      return function (area, key, value) {
        if (!writes) return hostCall(method, [area, keyArg(key)]);
        return hostCall(method, value === undefined ? [area, keyArg(key)] : [area, keyArg(key), value]);
      };
    }
    const cxUserspace = {
      create: userspace('create'), read: userspace('read'), update: userspace('update'), delete: userspace('delete'),
    };
    const modules = rec({ cxKV: cxKV, cxUserspace: cxUserspace });
    const missing = rec({ cxRest: 1, cxOriginate: 1, cxCall: 1, cxLookup: 1, axios: 1, moment: 1, lodash: 1, request: 1 });
    return function require(name) {
      name = StringCtor(name);
      if (modules[name] !== undefined) return modules[name];
      if (missing[name] !== undefined) {
        throw construct(ErrorCtor, ["require('" + name + "') is not offered by ScriptForge yet (the hosted product's " +
          'npm whitelist and platform REST helpers are not available); offered: cxKV, cxUserspace']);
      }
      throw construct(ErrorCtor, ["require('" + name + "'): no such module; offered: cxKV, cxUserspace"]);
    };
  }

  // ---- globals -----------------------------------------------------------------------------------
  // Removed: shared memory (Atomics.wait would block past any interrupt), weak references (their
  // callbacks run at GC time, outside any run), and QuickJS's __date_clock (the worker's real clock in
  // microseconds: it breaks the frozen clock and times other customers' load).
  delete global.SharedArrayBuffer;
  delete global.Atomics;
  delete global.WeakRef;
  delete global.FinalizationRegistry;
  delete global.__date_clock;
  global.Date = FrozenDate;
  global.setTimeout = function (fn, ms) { return addTimer(fn, ms, apply(arraySlice, arguments, [2]), false); };
  global.setInterval = function (fn, ms) { return addTimer(fn, ms, apply(arraySlice, arguments, [2]), true); };
  global.clearTimeout = function (id) { clearTimer(id); };
  global.clearInterval = function (id) { clearTimer(id); };
  Math.random = random;
  defineProperty(JSON, 'stringify', { value: stringify, writable: true, configurable: true });
  global.console = makeConsole();
  global.process = { env: JSONparse(envJson) };
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
    get: function () { throw construct(ErrorCtor, ['ctx (Class 5 programmable voice) is not offered by ScriptForge yet']); },
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
    if (typeof global[name] === 'function') return global[name];
    // `const main = async (data) => ...` at top level binds no property of the global object, but a
    // global evaluation of the bare name finds it (the name is checked to be one first)
    if (apply(regexpExec, IDENTIFIER, [name]) === null) return null;
    let found;
    try { found = globalEval(name); } catch (e) { return null; }
    return typeof found === 'function' ? found : null;
  }

  function driverFunctions() {
    const names = list();
    const tables = [global.module && global.module.exports, global.module && global.module.export];
    for (let i = 0; i < tables.length; i++) {
      const table = tables[i];
      if (table && typeof table === 'object') {
        const keys = objectKeys(table);
        for (let j = 0; j < keys.length; j++) if (typeof table[keys[j]] === 'function') push(names, StringCtor(keys[j]));
      }
    }
    return joined(names, ', ');
  }

  function startRun(varsJson, now, seedA, seedB, functionName) {
    // calls of earlier runs that were never answered can never settle now: without this, each left
    // ~750 bytes behind and a warm context reached its memory limit after some tens of thousands
    for (const id in waiting) delete waiting[id];
    run = rec({ id: run.id + 1, done: false, result: null, logs: list(), logsDropped: 0, calls: list(), callsMade: 0,
      callChars: 0, outbound: list(), returnedUndefined: false });
    const runId = run.id;
    nowMs = now;
    runStartMs = now;
    timers = list();
    timersLive = 0;
    s0 = seedA | 0 || 1; s1 = seedB | 0 || 2; s2 = (seedA ^ 0x9e3779b9) | 0; s3 = (seedB ^ 0x85ebca6b) | 0;
    for (let i = 0; i < 8; i++) random();
    let data;
    try { data = JSONparse(varsJson); } catch (e) {
      run.done = true;
      run.result = failure('runtime', 400, 'invalid input: ' + describe(e));
      return;
    }
    currentData = data;
    try {
      defineProperty(vars, 'routing', {
        value: data !== null && typeof data === 'object' ? data.routing : undefined,
        writable: true, configurable: true,
      });
      const name = functionName || 'main';
      const fn = entryFunction(name);
      if (fn === null) {
        run.done = true;
        const message = scriptType === 'driver'
          ? "driver has no function '" + name + "' in module.exports (it has: " + (driverFunctions() || 'none') + ')'
          : "script defines no function '" + name + "'";
        run.result = failure('not_found', 404, message);
        return;
      }
      const returned = apply(fn, undefined, [data]);
      if (returned !== null && (typeof returned === 'object' || typeof returned === 'function') &&
          typeof returned.then === 'function') {
        apply(promiseThen, apply(promiseResolve, PromiseCtor, [returned]), [
          function (v) { completeOk(runId, v); }, function (e) { completeError(runId, e); }]);
      } else if (returned !== undefined) {
        completeOk(runId, returned);
      } else {
        run.returnedUndefined = true;
      }
    } catch (e) {
      completeError(runId, e);
    }
  }

  function settleOne(id, ok, value) {
    const w = waiting[id];
    if (w === undefined) return;
    delete waiting[id];
    if (w.runId !== run.id || run.done) return;
    if (ok) w.resolve(value); else w.reject(value);
  }

  function errorText(r) {
    return '{"ok":false,"error":{"kind":"' + r.kind + '","code":' + r.code + ',"message":' + quotePrimitive(r.message) + '}}';
  }

  // ---- the protocol with the host (this expression's value) ------------------------------------
  // Each function catches what the script could make it throw: only the engine's interrupt (the
  // deadline) and out-of-memory leave it.
  return rec({
    // Starts a run; the host then runs jobs and polls `isDone`.
    start: startRun,
    // The host calls queued since the last take, as JSON text '[[id, method, [args]], ...]' ('' if none).
    // At most `limits.batchChars` of them at a time (the rest on the next take): the host reads each
    // message in one go on the event loop that serves every account, so no run hands it a large one.
    takeCalls: function () {
      const calls = run.calls;
      if (calls.length === 0) return '';
      let end = 0, chars = 0;
      while (end < calls.length && (end === 0 || chars + calls[end].length <= limits.batchChars)) {
        chars += calls[end].length;
        end++;
      }
      if (end === calls.length) {
        run.calls = list();
        return '[' + joined(calls, ',') + ']';
      }
      const taken = list(), rest = list();
      for (let i = 0; i < calls.length; i++) push(i < end ? taken : rest, calls[i]);
      run.calls = rest;
      return '[' + joined(taken, ',') + ']';
    },
    // Settles host calls: JSON text of [[id, ok, value], ...] made by the host.
    settle: function (resultsJson) {
      const results = JSONparse(resultsJson);
      for (let i = 0; i < results.length; i++) {
        try { settleOne(results[i][0], results[i][1], results[i][2]); } catch (e) { completeError(run.id, e); }
      }
    },
    // Fires the earliest pending timer when the run is idle (see "timers" above): 0 none, 1 fired,
    // 2 the next is due after `limitMs`, the run's time limit.
    fireTimer: fireTimer,
    isDone: function () { return run.done; },
    returnedUndefined: function () { return run.returnedUndefined; },
    // Completes a run that has nothing left to wait for (main returned undefined, no exit()).
    finishIdle: function () { try { completeOk(run.id, null); } catch (e) { completeError(run.id, e); } },
    // Ends a run whose Promise can never settle: nothing is queued and nothing is awaited.
    failIdle: function (message) {
      if (run.done) return;
      run.done = true;
      run.result = failure('runtime', 500, message);
    },
    abandon: function () { run.done = true; },
    // '{"result": {"ok":true,"value":...} | {"ok":false,"error":{kind, code, message}}, "logs": [...],
    // "outbound": [...]}', built by concatenation from text this file made: it runs no script code.
    result: function (maxChars) {
      const r = run.result === null ? failure('runtime', 500, 'run did not complete') : run.result;
      const head = r.ok ? '{"ok":true,"value":' + r.text + '}' : errorText(r);
      let logs = joined(run.logs, ',');
      if (run.logsDropped) {
        logs += (logs ? ',' : '') + '{"level":"warn","message":"[' + run.logsDropped + ' more log lines dropped]"}';
      }
      const outbound = r.ok ? joined(run.outbound, ',') : '';
      const text = '{"result":' + head + ',"logs":[' + logs + '],"outbound":[' + outbound + ']}';
      if (text.length <= maxChars) return text;
      return '{"result":' + errorText(failure('memory', 500, 'the response and logs are ' + text.length +
        ' characters, over the limit of ' + maxChars)) + ',"logs":[],"outbound":[]}';
    },
  });
})
