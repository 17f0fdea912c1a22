#!/usr/bin/env node
// One mysql2 scenario against pyproxy, for integration/test_drivers_mysql2.py.
//
//   node scenario.js SCENARIO '{"host": ..., "port": ..., "user": ..., "password": ...,
//                               "database": ..., "table": ..., ...}'
//
// Prints exactly one JSON object on its last stdout line: what the scenario observed, or
// {"error": {code, errno, sqlState, message, ...}} (exit code 1) when something threw.
// Values are made JSON-safe: DECIMAL and DATETIME come back as strings (decimalNumbers off,
// dateStrings on) and Buffers are summarised by length and SHA-256.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const mysql = require('mysql2/promise');

const [, , scenario, rawConfig] = process.argv;
const config = JSON.parse(rawConfig || '{}');

function connect(extra = {}) {
  return mysql.createConnection({
    host: config.host,
    port: config.port,
    user: config.user,
    password: config.password,
    database: config.database,
    charset: 'UTF8MB4_GENERAL_CI',
    dateStrings: true,
    decimalNumbers: false,
    supportBigNumbers: true,
    connectTimeout: 10000,
    ...extra,
  });
}

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

function plain(value) {
  if (Buffer.isBuffer(value)) return { buffer_length: value.length, sha256: sha256(value) };
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === 'object' && value.constructor === Object) {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = plain(v);
    return out;
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}

// What a multi-statement/any query() result looks like, per result set.
function describe(result) {
  if (Array.isArray(result)) return { rows: plain(result) };
  return { affectedRows: result.affectedRows };
}

const LITERAL_SQL = config.literal_sql;

const scenarios = {
  // Literal types and a table, through query() (text protocol) and execute() (binary protocol).
  async plain() {
    const conn = await connect();
    try {
      const out = {};
      [out.literal_query] = await conn.query({ sql: LITERAL_SQL, rowsAsArray: true });
      [out.literal_execute] = await conn.execute({ sql: LITERAL_SQL, rowsAsArray: true });
      await conn.query(config.ddl);
      for (const row of config.rows) {
        await conn.query(config.insert, row);
      }
      [out.table_query] = await conn.query({ sql: config.select, rowsAsArray: true });
      [out.table_execute] = await conn.execute({ sql: config.select, rowsAsArray: true });
      [out.by_name] = await conn.execute({ sql: config.by_name, rowsAsArray: true }, [config.emoji]);
      return plain(out);
    } finally {
      await conn.end();
    }
  },

  // A committed and a rolled-back transaction, watched from a second connection.
  async transaction() {
    const writer = await connect();
    const reader = await connect();
    const count = async (c) => {
      const [rows] = await c.query(`SELECT COUNT(*) AS n FROM ${config.table}`);
      return Number(rows[0].n);
    };
    try {
      const out = {};
      await writer.query(`CREATE TABLE ${config.table} (id INT PRIMARY KEY, v VARCHAR(20))`);
      await writer.beginTransaction();
      await writer.execute(`INSERT INTO ${config.table} VALUES (?, ?)`, [1, 'committed']);
      out.reader_during_commit_tx = await count(reader);
      await writer.commit();
      out.reader_after_commit = await count(reader);
      await writer.beginTransaction();
      await writer.query(`INSERT INTO ${config.table} VALUES (2, 'rolled back')`);
      out.writer_inside_rollback_tx = await count(writer);
      out.reader_during_rollback_tx = await count(reader);
      await writer.rollback();
      out.writer_after_rollback = await count(writer);
      [out.reader_rows] = await reader.query({
        sql: `SELECT id, v FROM ${config.table} ORDER BY id`, rowsAsArray: true });
      return out;
    } finally {
      await writer.end();
      await reader.end();
    }
  },

  async multi() {
    const conn = await connect({ multipleStatements: true });
    try {
      const [results] = await conn.query({ sql: config.sql, rowsAsArray: true });
      const [after] = await conn.query({ sql: config.after, rowsAsArray: true });
      return { results: results.map(describe), after: plain(after) };
    } finally {
      await conn.end();
    }
  },

  async infile() {
    const conn = await connect({ infileStreamFactory: () => fs.createReadStream(config.file) });
    try {
      await conn.query(config.ddl);
      const [result] = await conn.query({
        sql: config.load, infileStreamFactory: () => fs.createReadStream(config.file) });
      const [rows] = await conn.query({
        sql: `SELECT COUNT(*), SUM(qty) FROM ${config.table}`, rowsAsArray: true });
      return { affectedRows: result.affectedRows, count_sum: plain(rows[0]) };
    } finally {
      await conn.end();
    }
  },

  // A random BLOB bigger than one packet: written with query() (escaped into a hex literal)
  // and with execute() (a binary parameter), read back with both protocols.
  async blob() {
    // mysql2 has no client-side packet limit to raise.
    const conn = await connect();
    try {
      const data = crypto.randomBytes(config.size);
      const t = config.table;
      await conn.query(`CREATE TABLE ${t} (id INT PRIMARY KEY, data LONGBLOB NOT NULL)`);
      await conn.query(`INSERT INTO ${t} VALUES (1, ?)`, [data]);
      await conn.execute(`INSERT INTO ${t} VALUES (?, ?)`, [2, data]);
      const out = { length: data.length, sha256: sha256(data) };
      for (const id of [1, 2]) {
        const [viaQuery] = await conn.query(`SELECT data FROM ${t} WHERE id = ?`, [id]);
        const [viaExecute] = await conn.execute(`SELECT data FROM ${t} WHERE id = ?`, [id]);
        out[`query_${id}_equal`] = Buffer.compare(viaQuery[0].data, data) === 0;
        out[`query_${id}_length`] = viaQuery[0].data.length;
        out[`execute_${id}_equal`] = Buffer.compare(viaExecute[0].data, data) === 0;
        out[`execute_${id}_length`] = viaExecute[0].data.length;
      }
      const [[{ one }]] = await conn.query('SELECT 1 AS one');
      out.after = one;
      return out;
    } finally {
      await conn.end();
    }
  },

  // Server-side prepared statements: execute() caches them; prepare()/close() explicitly.
  async prepared() {
    const conn = await connect();
    const other = await connect();
    try {
      const out = { executions: [] };
      const t = config.table;
      await conn.query(config.ddl);
      for (const row of config.rows) {
        await conn.execute(config.insert, row);
      }
      for (const low of [1, 3, 2]) {
        const [rows] = await conn.execute({ sql: config.select_from, rowsAsArray: true }, [low]);
        const [[{ n }]] = await other.query(`SELECT COUNT(*) AS n FROM ${t}`);
        out.executions.push({ low, rows: plain(rows), other_count: Number(n) });
      }
      const stmt = await conn.prepare(`SELECT ? AS a, ? AS b, ? AS c FROM DUAL`);
      out.param_count = stmt.statement.parameters.length;
      const [r1] = await stmt.execute([null, config.emoji, 7]);
      const [r2] = await stmt.execute(['x', 'y', 8]);
      out.explicit = plain([r1, r2].map((r) => Object.values(r[0])));
      await stmt.close();
      conn.unprepare(config.select_from);
      const [[{ after }]] = await conn.query('SELECT 2 AS after');
      out.after = after;
      return out;
    } finally {
      await conn.end();
      await other.end();
    }
  },

  // Statements interleaved over several connections, in order:
  //   steps: [{conn: 0, sql: "...", params: [...], method: "query"|"execute", end: bool}]
  // A connection opens at its first step; "end" closes it after that step.  Returns each
  // step's rows (as arrays) or {affectedRows, insertId}.
  async steps() {
    const conns = new Map();
    const results = [];
    try {
      for (const step of config.steps) {
        if (!conns.has(step.conn)) conns.set(step.conn, await connect(step.options || {}));
        const conn = conns.get(step.conn);
        const method = step.method === 'execute' ? 'execute' : 'query';
        const [result] = await conn[method]({ sql: step.sql, rowsAsArray: true }, step.params || []);
        results.push(Array.isArray(result) ? plain(result)
          : { affectedRows: result.affectedRows, insertId: result.insertId });
        if (step.end) {
          await conn.end();
          conns.delete(step.conn);
        }
      }
      return { results };
    } finally {
      for (const conn of conns.values()) await conn.end();
    }
  },

  async wrong_password() {
    const conn = await connect({ password: config.wrong_password });
    await conn.end();
    return { connected: true };
  },
};

async function main() {
  const run = scenarios[scenario];
  if (!run) throw new Error(`unknown scenario ${scenario}`);
  const timer = setTimeout(() => {
    process.stdout.write(`${JSON.stringify({ error: { message: 'scenario timed out' } })}\n`);
    process.exit(2);
  }, config.timeout_ms || 50000);
  try {
    const out = await run();
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    clearTimeout(timer);
  }
  process.exit(0);
}

main().catch((err) => {
  process.stdout.write(`${JSON.stringify({
    error: {
      code: err.code, errno: err.errno, sqlState: err.sqlState, message: err.message,
      fatal: err.fatal, stack: String(err.stack || ''),
    },
  })}\n`);
  // Writes to a pipe are synchronous on Linux; do not wait for sockets left open.
  process.exit(1);
});
