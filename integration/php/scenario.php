<?php
// One PHP scenario against pyproxy, through mysqli or PDO (both over mysqlnd, PHP's own
// implementation of the protocol), for integration/test_drivers_php.py.
//
//   php scenario.php SCENARIO '{"api": "mysqli"|"pdo", "host": ..., "port": ..., ...}'
//
// Prints exactly one JSON object on its last stdout line: what the scenario observed, or
// {"error": {errno, sqlState, message}} (exit code 1) when something threw.  Values are made
// JSON-safe the way integration/drivers.py expects: DECIMAL and DATETIME as the text mysqlnd
// gives them, integers and floats native.
//
// "text" means COM_QUERY: mysqli::query(), PDO::query() or a PDO statement with emulated
// prepares; "binary" means COM_STMT_PREPARE + COM_STMT_EXECUTE: mysqli::prepare(), or a PDO
// statement with PDO::ATTR_EMULATE_PREPARES off.

declare(strict_types=1);

mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);

$config = json_decode($argv[2], true, 512, JSON_THROW_ON_ERROR);

/** A connection through either API; `binary` chooses how execute() and prepare() send. */
interface Db
{
    /** Rows of a COM_QUERY, each a list. */
    public function query(string $sql): array;
    /** A statement to run once or more: prepared on the server when binary. */
    public function prepare(string $sql): Stmt;
    /** Affected rows of a COM_QUERY. */
    public function exec(string $sql): int;
    /** Every result of a multi-statement COM_QUERY: ["rows" => ...] or ["affectedRows" => n]. */
    public function multi(string $sql): array;
    /** INSERT INTO $table VALUES ($id, $data) with $data escaped into the statement's text. */
    public function insertEscaped(string $table, int $id, string $data): void;
    /** The same as a prepared statement's parameter, sent as long data where the API can. */
    public function insertLongData(string $table, int $id, string $data): void;
    public function begin(): void;
    public function commit(): void;
    public function rollback(): void;
}

interface Stmt
{
    /** Rows when the statement has a result set, else the affected row count. */
    public function run(array $params = []): array|int;
    /** How many parameters the server announced, or null when the API does not tell. */
    public function paramCount(): ?int;
    public function close(): void;
}

final class MysqliDb implements Db
{
    public mysqli $m;

    public function __construct(array $config, array $options)
    {
        $this->m = mysqli_init();
        $this->m->options(MYSQLI_OPT_CONNECT_TIMEOUT, 10);
        $this->m->options(MYSQLI_OPT_READ_TIMEOUT, 30);
        $this->m->options(MYSQLI_OPT_INT_AND_FLOAT_NATIVE, true);
        $this->m->options(MYSQLI_OPT_LOCAL_INFILE, !empty($options['infile']));
        // No 'multi' option: multi_query() turns multi-statements on itself (COM_SET_OPTION).
        $this->m->real_connect($config['host'], $config['user'], $config['password'],
            $config['database'], (int) $config['port']);
        $this->m->set_charset('utf8mb4');
    }

    public function query(string $sql): array
    {
        return $this->m->query($sql)->fetch_all(MYSQLI_NUM);
    }

    public function prepare(string $sql): Stmt
    {
        return new MysqliStmt($this->m->prepare($sql));
    }

    public function exec(string $sql): int
    {
        $this->m->query($sql);
        return (int) $this->m->affected_rows;
    }

    public function multi(string $sql): array
    {
        $results = [];
        $this->m->multi_query($sql);
        do {
            $result = $this->m->store_result();
            $results[] = $result ? ['rows' => $result->fetch_all(MYSQLI_NUM)]
                : ['affectedRows' => (int) $this->m->affected_rows];
        } while ($this->m->more_results() && $this->m->next_result());
        return $results;
    }

    public function insertEscaped(string $table, int $id, string $data): void
    {
        $this->m->query("INSERT INTO $table VALUES ($id, '" . $this->m->real_escape_string($data) . "')");
    }

    public function insertLongData(string $table, int $id, string $data): void
    {
        // COM_STMT_SEND_LONG_DATA in 1 MiB pieces, then COM_STMT_EXECUTE.
        $stmt = $this->m->prepare("INSERT INTO $table VALUES (?, ?)");
        $null = null;
        $stmt->bind_param('ib', $id, $null);
        foreach (str_split($data, 1 << 20) as $piece) {
            $stmt->send_long_data(1, $piece);
        }
        $stmt->execute();
        $stmt->close();
    }

    public function begin(): void
    {
        $this->m->begin_transaction();
    }

    public function commit(): void
    {
        $this->m->commit();
    }

    public function rollback(): void
    {
        $this->m->rollback();
    }
}

final class MysqliStmt implements Stmt
{
    public function __construct(private mysqli_stmt $stmt)
    {
    }

    public function run(array $params = []): array|int
    {
        if ($params) {
            // Typed: execute($params) would send every value as a string.
            $types = implode('', array_map(fn ($v) => is_int($v) ? 'i' : (is_float($v) ? 'd' : 's'), $params));
            $this->stmt->bind_param($types, ...array_values($params));
        }
        $this->stmt->execute();
        $result = $this->stmt->get_result();
        return $result ? $result->fetch_all(MYSQLI_NUM) : (int) $this->stmt->affected_rows;
    }

    public function paramCount(): ?int
    {
        return $this->stmt->param_count;
    }

    public function close(): void
    {
        $this->stmt->close();
    }
}

final class PdoDb implements Db
{
    public PDO $pdo;

    public function __construct(array $config, array $options)
    {
        $dsn = sprintf('mysql:host=%s;port=%d;dbname=%s;charset=utf8mb4', $config['host'],
            $config['port'], $config['database']);
        $this->pdo = new PDO($dsn, $config['user'], $config['password'], [
            PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
            PDO::ATTR_TIMEOUT => 10,
            PDO::ATTR_EMULATE_PREPARES => empty($options['binary']),
            PDO::ATTR_STRINGIFY_FETCHES => false,
            PDO::MYSQL_ATTR_LOCAL_INFILE => !empty($options['infile']),
            PDO::MYSQL_ATTR_MULTI_STATEMENTS => !empty($options['multi']),
        ]);
    }

    public function query(string $sql): array
    {
        return $this->pdo->query($sql)->fetchAll(PDO::FETCH_NUM);
    }

    public function prepare(string $sql): Stmt
    {
        return new PdoStmt($this->pdo->prepare($sql));
    }

    public function exec(string $sql): int
    {
        return (int) $this->pdo->exec($sql);
    }

    public function multi(string $sql): array
    {
        $results = [];
        $stmt = $this->pdo->query($sql);
        do {
            $results[] = $stmt->columnCount() > 0 ? ['rows' => $stmt->fetchAll(PDO::FETCH_NUM)]
                : ['affectedRows' => $stmt->rowCount()];
        } while ($stmt->nextRowset());
        return $results;
    }

    public function insertEscaped(string $table, int $id, string $data): void
    {
        $this->pdo->exec("INSERT INTO $table VALUES ($id, " . $this->pdo->quote($data) . ")");
    }

    public function insertLongData(string $table, int $id, string $data): void
    {
        $stmt = $this->pdo->prepare("INSERT INTO $table VALUES (?, ?)");
        $stmt->bindValue(1, $id, PDO::PARAM_INT);
        $stmt->bindValue(2, $data, PDO::PARAM_LOB);
        $stmt->execute();
    }

    public function begin(): void
    {
        $this->pdo->beginTransaction();
    }

    public function commit(): void
    {
        $this->pdo->commit();
    }

    public function rollback(): void
    {
        $this->pdo->rollBack();
    }
}

final class PdoStmt implements Stmt
{
    public function __construct(private PDOStatement $stmt)
    {
    }

    public function run(array $params = []): array|int
    {
        foreach (array_values($params) as $i => $value) {
            $type = match (true) {
                $value === null => PDO::PARAM_NULL,
                is_int($value) => PDO::PARAM_INT,
                default => PDO::PARAM_STR,
            };
            // Floats go as text: PDO has no float parameter type.
            $this->stmt->bindValue($i + 1, is_float($value) ? (string) $value : $value, $type);
        }
        $this->stmt->execute();
        if ($this->stmt->columnCount() > 0) {
            return $this->stmt->fetchAll(PDO::FETCH_NUM);
        }
        return $this->stmt->rowCount();
    }

    public function paramCount(): ?int
    {
        return null;  // PDOStatement does not show it.
    }

    public function close(): void
    {
        $this->stmt->closeCursor();
    }
}

function connect(array $options = []): Db
{
    global $config;
    return $config['api'] === 'pdo' ? new PdoDb($config, $options) : new MysqliDb($config, $options);
}

function scalar(Db $db, string $sql): mixed
{
    return $db->query($sql)[0][0];
}

// --- scenarios -------------------------------------------------------------------------------

$scenarios = [
    // Literal types and a table, through the text and the binary protocol.
    'plain' => function (array $c): array {
        $text = connect();
        $binary = connect(['binary' => true]);
        $out = [];
        $out['literal_query'] = $text->query($c['literal_sql']);
        $out['literal_execute'] = $binary->prepare($c['literal_sql'])->run();
        $text->exec($c['ddl']);
        $insert = $text->prepare($c['insert']);
        foreach ($c['rows'] as $row) {
            $insert->run($row);
        }
        $out['table_query'] = $text->query($c['select']);
        $out['table_execute'] = $binary->prepare($c['select'])->run();
        $out['by_name'] = $binary->prepare($c['by_name'])->run([$c['emoji']]);
        return $out;
    },

    // A committed and a rolled-back transaction, watched from a second connection.
    'transaction' => function (array $c): array {
        $writer = connect(['binary' => true]);
        $reader = connect();
        $t = $c['table'];
        $count = fn (Db $db) => scalar($db, "SELECT COUNT(*) FROM $t");
        $writer->exec("CREATE TABLE $t (id INT PRIMARY KEY, v VARCHAR(20))");
        $writer->begin();
        $writer->prepare("INSERT INTO $t VALUES (?, ?)")->run([1, 'committed']);
        $out['reader_during_commit_tx'] = $count($reader);
        $writer->commit();
        $out['reader_after_commit'] = $count($reader);
        $writer->begin();
        $writer->exec("INSERT INTO $t VALUES (2, 'rolled back')");
        $out['writer_inside_rollback_tx'] = $count($writer);
        $out['reader_during_rollback_tx'] = $count($reader);
        $writer->rollback();
        $out['writer_after_rollback'] = $count($writer);
        $out['reader_rows'] = $reader->query("SELECT id, v FROM $t ORDER BY id");
        return $out;
    },

    'multi' => function (array $c): array {
        $db = connect(['multi' => true]);
        return ['results' => $db->multi($c['sql']), 'after' => $db->query($c['after'])];
    },

    // LOAD DATA LOCAL INFILE in a COM_QUERY, or with "prepared" as a prepared statement.
    'infile' => function (array $c): array {
        $db = connect(['infile' => true, 'binary' => !empty($c['prepared'])]);
        $db->exec($c['ddl']);
        $affected = empty($c['prepared']) ? $db->exec($c['load']) : $db->prepare($c['load'])->run();
        return ['affectedRows' => $affected,
                'count_sum' => $db->query("SELECT COUNT(*), SUM(qty) FROM {$c['table']}")[0]];
    },

    // A random BLOB bigger than one packet: row 1 escaped into a COM_QUERY, row 2 a prepared
    // statement's parameter; each read back through both protocols.
    'blob' => function (array $c): array {
        $text = connect();
        $binary = connect(['binary' => true]);
        $t = $c['table'];
        $data = random_bytes($c['size']);
        $out = ['length' => strlen($data), 'sha256' => hash('sha256', $data)];
        $text->exec("CREATE TABLE $t (id INT PRIMARY KEY, data LONGBLOB NOT NULL)");
        $text->insertEscaped($t, 1, $data);
        $binary->insertLongData($t, 2, $data);
        foreach ([1, 2] as $id) {
            foreach (['query' => $text->query("SELECT data FROM $t WHERE id = $id"),
                      'execute' => $binary->prepare("SELECT data FROM $t WHERE id = ?")->run([$id])]
                     as $how => $rows) {
                $out["{$how}_{$id}_length"] = strlen($rows[0][0]);
                $out["{$how}_{$id}_equal"] = $rows[0][0] === $data;
            }
        }
        $out['after'] = scalar($text, 'SELECT 1');
        return $out;
    },

    // Server-side prepared statements: several executions, another client in between.
    'prepared' => function (array $c): array {
        $db = connect(['binary' => true]);
        $other = connect();
        $t = $c['table'];
        $db->exec($c['ddl']);
        $insert = $db->prepare($c['insert']);
        foreach ($c['rows'] as $row) {
            $insert->run($row);
        }
        $insert->close();
        $select = $db->prepare($c['select_from']);
        $executions = [];
        foreach ([1, 3, 2] as $low) {
            $rows = $select->run([$low]);
            $executions[] = ['low' => $low, 'rows' => $rows,
                             'other_count' => scalar($other, "SELECT COUNT(*) FROM $t")];
        }
        $select->close();
        $explicit = $db->prepare('SELECT ? AS a, ? AS b, ? AS c FROM DUAL');
        $out = ['executions' => $executions, 'param_count' => $explicit->paramCount()];
        $out['explicit'] = [$explicit->run([null, $c['emoji'], 7])[0], $explicit->run(['x', 'y', 8])[0]];
        $explicit->close();
        $out['after'] = scalar($db, 'SELECT 2 AS after');
        return $out;
    },

    // Neither API has a batch call: a prepared INSERT per row in a transaction, several
    // statements in one multi-statement query, a duplicate key in a transaction rolled back.
    'batch' => function (array $c): array {
        $db = connect(['binary' => true]);
        $text = connect(['multi' => true]);  // PDO cannot prepare several statements
        $t = $c['table'];
        $n = $c['rows'];
        $db->exec("CREATE TABLE $t (id INT PRIMARY KEY, label VARCHAR(64) NOT NULL, qty INT NOT NULL)");
        $db->begin();
        $insert = $db->prepare("INSERT INTO $t (id, label, qty) VALUES (?, ?, ?)");
        $affected = 0;
        for ($i = 1; $i <= $n; $i++) {
            $affected += $insert->run([$i, "label-$i-\u{e9}\u{1F600}", $i * 7919 % 1000]);
        }
        $db->commit();
        $out = ['prepared_affected' => $affected];
        $out['multi_statement'] = $text->multi("UPDATE $t SET qty = qty + 1 WHERE id <= 3; "
            . "DELETE FROM $t WHERE id = $n; INSERT INTO $t VALUES ($n, 'again', 0)");
        $db->begin();
        try {
            $insert->run([$n + 1, 'dup', 0]);
            $insert->run([1, 'dup', 0]);
        } catch (mysqli_sql_exception | PDOException $e) {
            $out['duplicate_error'] = error_of($e)['errno'];
        }
        $db->rollback();
        $out['count_sum'] = $db->query("SELECT COUNT(*), SUM(qty), SUM(label = 'dup') FROM $t")[0];
        return $out;
    },

    'wrong_password' => function (array $c): array {
        global $config;
        $config['password'] = $c['wrong_password'];
        connect();
        return ['connected' => true];
    },
];

/** errno, SQLSTATE and message of a mysqli or PDO exception. */
function error_of(Throwable $e): array
{
    if ($e instanceof mysqli_sql_exception) {
        return ['errno' => $e->getCode(), 'sqlState' => $e->getSqlState(), 'message' => $e->getMessage()];
    }
    if ($e instanceof PDOException && is_array($e->errorInfo)) {
        return ['errno' => $e->errorInfo[1], 'sqlState' => $e->errorInfo[0], 'message' => $e->errorInfo[2]];
    }
    if ($e instanceof PDOException) {
        // A failed connect: no errorInfo; the message is "SQLSTATE[HY000] [1045] Access denied ...".
        preg_match('/^SQLSTATE\[(\w+)\] \[(\d+)\] (.*)$/s', $e->getMessage(), $m);
        return ['errno' => (int) ($m[2] ?? $e->getCode()), 'sqlState' => $m[1] ?? null,
                'message' => $m[3] ?? $e->getMessage()];
    }
    return ['errno' => null, 'sqlState' => null, 'message' => get_class($e) . ': ' . $e->getMessage()];
}

$scenario = $scenarios[$argv[1]] ?? null;
try {
    if ($scenario === null) {
        throw new InvalidArgumentException("unknown scenario {$argv[1]}");
    }
    echo json_encode($scenario($config), JSON_THROW_ON_ERROR | JSON_PRESERVE_ZERO_FRACTION), "\n";
} catch (Throwable $e) {
    echo json_encode(['error' => error_of($e) + ['class' => get_class($e)]], JSON_PARTIAL_OUTPUT_ON_ERROR), "\n";
    exit(1);
}
