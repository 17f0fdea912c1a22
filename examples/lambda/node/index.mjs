// AWS Lambda function (Node.js 18 runtime, handler "index.handler") that reaches
// MySQL through pyproxy with the mysql2 driver.
//
// Environment: DB_HOST (pyproxy's address, e.g. an internal load balancer in
// front of pyproxy instances), DB_PORT (3306), DB_USER, DB_PASSWORD, DB_NAME.
// Bundle node_modules (npm install mysql2) with this file, and put the function
// in the VPC subnets that reach pyproxy.
//
// The connection is opened on the first invocation and kept by the execution
// environment for the next ones.  pyproxy lends it a database connection only
// while a statement or transaction runs, so thousands of idle environments
// cost the database nothing; if pyproxy closed it while the environment was
// frozen (idle_client_timeout), the next invocation connects again.
import mysql from 'mysql2/promise';

let connection;

async function connect() {
  if (connection === undefined) {
    connection = await mysql.createConnection({
      host: process.env.DB_HOST,
      port: Number(process.env.DB_PORT || 3306),
      user: process.env.DB_USER,
      password: process.env.DB_PASSWORD,
      database: process.env.DB_NAME,
      connectTimeout: 5000,
    });
    const current = connection;
    // Closed by the other end while idle: forget it, the next call reconnects.
    current.on('error', () => {
      if (connection === current) connection = undefined;
    });
  }
  return connection;
}

async function query(sql, params) {
  try {
    return await (await connect()).execute(sql, params);
  } catch (error) {
    if (!error.fatal && !/closed state/.test(error.message)) throw error;
    connection = undefined; // a connection that died while frozen: once more on a new one
    return (await connect()).execute(sql, params);
  }
}

export const handler = async (event) => {
  const name = (event && event.name) || 'world';
  // A server-side prepared statement: pyproxy multiplexes it, RDS Proxy would pin.
  const [rows] = await query("SELECT CONCAT('hello, ', ?) AS greeting, DATABASE() AS db", [name]);
  return {
    statusCode: 200,
    body: JSON.stringify({ greeting: rows[0].greeting, database: rows[0].db }),
  };
};
