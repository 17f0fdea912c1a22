#!/usr/bin/env node
// mysql2 execute() load for integration/test_pin_rate.py.
//
//   node pin_rate.js '{"host": ..., "port": ..., "user": ..., "password": ..., "database": ...,
//                      "table": ..., "connections": 8, "duration_ms": 6000,
//                      "reconnect_every": 40, "max_iterations": 100000}'
//
// Opens `connections` connections at once; each runs, until `duration_ms` has passed (and at
// most `max_iterations` times), an INSERT, a point SELECT of the row it inserted and a COUNT,
// all through execute() (server-side prepared statements, cached per connection by mysql2),
// and every `reconnect_every` iterations closes its connection and opens a new one.
// Prints one JSON object on its last stdout line:
//   {sessions, queries, mismatches, errors: [{code, errno, sqlState, message}]}
// A watchdog ends the process (exit 2) if the run overshoots by 30 s.
'use strict';

const mysql = require('mysql2/promise');

const config = JSON.parse(process.argv[2] || '{}');
const connections = config.connections || 8;
const durationMs = config.duration_ms || 5000;
const reconnectEvery = config.reconnect_every || 40;
const maxIterations = config.max_iterations || 100000;
const table = config.table;

function connect() {
  return mysql.createConnection({
    host: config.host,
    port: config.port,
    user: config.user,
    password: config.password,
    database: config.database,
    charset: 'UTF8MB4_GENERAL_CI',
    connectTimeout: 10000,
  });
}

const totals = { sessions: 0, queries: 0, mismatches: 0, errors: [] };

function record(err) {
  if (totals.errors.length < 20) {
    totals.errors.push({
      code: err.code, errno: err.errno, sqlState: err.sqlState, message: err.message,
    });
  } else {
    totals.errors_not_shown = (totals.errors_not_shown || 0) + 1;
  }
}

async function worker(id, deadline) {
  let conn = null;
  for (let i = 0; i < maxIterations && Date.now() < deadline; i += 1) {
    try {
      if (conn === null) {
        conn = await connect();
        totals.sessions += 1;
      }
      const value = `node-${id}-${i}`;
      const [ok] = await conn.execute(
        `INSERT INTO ${table} (worker, k, v) VALUES (?, ?, ?)`, [id, i, value]);
      const [rows] = await conn.execute(
        `SELECT v FROM ${table} WHERE id = ?`, [ok.insertId]);
      const [counted] = await conn.execute(
        `SELECT COUNT(*) AS n FROM ${table} WHERE worker = ? AND k <= ?`, [id, i]);
      totals.queries += 3;
      if (rows.length !== 1 || rows[0].v !== value || Number(counted[0].n) < 1) {
        totals.mismatches += 1;
      }
      if ((i + 1) % reconnectEvery === 0) {
        await conn.end();
        conn = null;
      }
    } catch (err) {
      record(err);
      if (conn !== null) {
        try { conn.destroy(); } catch (e) { /* already gone */ }
        conn = null;
      }
    }
  }
  if (conn !== null) await conn.end();
}

async function main() {
  const watchdog = setTimeout(() => {
    process.stdout.write(`${JSON.stringify({ ...totals, timed_out: true })}\n`);
    process.exit(2);
  }, durationMs + 30000);
  const deadline = Date.now() + durationMs;
  const workers = [];
  for (let id = 0; id < connections; id += 1) workers.push(worker(id, deadline));
  await Promise.all(workers);
  clearTimeout(watchdog);
  process.stdout.write(`${JSON.stringify(totals)}\n`);
  process.exit(0);
}

main().catch((err) => {
  record(err);
  process.stdout.write(`${JSON.stringify(totals)}\n`);
  process.exit(1);
});
