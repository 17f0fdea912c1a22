#!/usr/bin/env node
// mysql2 over TLS to pyproxy, for integration/test_tls.py.
//
//   node tls.js SCENARIO '{"host": ..., "port": ..., "user": ..., "password": ...,
//                          "database": ..., "ca": "/path/ca.pem"}'
//
// SCENARIO "verified": connects with ssl {ca}, so mysql2 (Node's tls) checks the chain and
// that the certificate names the host, runs SELECT 1 and reports the TLS protocol and the
// server certificate's fingerprint.  Prints one JSON object on its last stdout line, or
// {"error": {code, errno, sqlState, message}} (exit code 1) when something threw.
'use strict';

const fs = require('fs');
const mysql = require('mysql2/promise');

const [, , scenario, rawConfig] = process.argv;
const config = JSON.parse(rawConfig || '{}');

async function main() {
  if (scenario !== 'verified') {
    throw new Error(`unknown scenario ${scenario}`);
  }
  const conn = await mysql.createConnection({
    host: config.host,
    port: config.port,
    user: config.user,
    password: config.password,
    database: config.database,
    connectTimeout: 10000,
    ssl: { ca: fs.readFileSync(config.ca), rejectUnauthorized: true },
  });
  try {
    const [rows] = await conn.query('SELECT 1 AS one');
    const socket = conn.connection.stream;
    const peer = socket.getPeerCertificate ? socket.getPeerCertificate() : null;
    return {
      one: rows[0].one,
      encrypted: Boolean(socket.encrypted),
      authorized: Boolean(socket.authorized),
      protocol: socket.getProtocol ? socket.getProtocol() : null,
      fingerprint256: peer ? peer.fingerprint256 : null,
    };
  } finally {
    await conn.end();
  }
}

main().then(
  (out) => { console.log(JSON.stringify(out)); },
  (err) => {
    console.log(JSON.stringify({ error: { code: err.code, errno: err.errno, sqlState: err.sqlState,
                                          message: String(err.message) } }));
    process.exitCode = 1;
  });
