// CALL of a procedure returning two result sets, through COM_STMT_EXECUTE (mysql2 execute()).
// Prints the results of two executes as JSON lines.
//   node call_multi.js HOST PORT USER PASSWORD DATABASE
const mysql = require('mysql2/promise');

(async () => {
  const [host, port, user, password, database] = [process.argv[2], Number(process.argv[3]),
    ...process.argv.slice(4, 7)];
  const conn = await mysql.createConnection({host, port, user, password, database});
  for (const x of [5, 7]) {
    const [results] = await conn.execute('CALL ps_two_results(?)', [x]);
    console.log(JSON.stringify(results.slice(0, 2)));
  }
  await conn.end();
})().catch((err) => { console.error(err.message); process.exit(1); });
