// One go-sql-driver/mysql scenario against pyproxy, for integration/test_drivers_go.py.
//
//	scenario SCENARIO '{"host": ..., "port": ..., "user": ..., "password": ..., ...}'
//
// Prints exactly one JSON object on its last stdout line: what the scenario observed, or
// {"error": {errno, message}} (exit code 1) when something failed.  Values are made JSON-safe
// the way integration/drivers.py expects: DECIMAL as its text, DATETIME as
// "YYYY-MM-DD HH:MM:SS".
//
// database/sql sends a statement without arguments as COM_QUERY (text protocol) and one with
// arguments as COM_STMT_PREPARE + COM_STMT_EXECUTE (binary protocol), unless the DSN says
// interpolateParams=true: then the driver puts the arguments into a COM_QUERY itself.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

type object = map[string]interface{}

var config object

func main() {
	if len(os.Args) != 3 {
		fail(fmt.Errorf("usage: scenario SCENARIO CONFIG_JSON"))
	}
	decoder := json.NewDecoder(strings.NewReader(os.Args[2]))
	decoder.UseNumber() // integers stay integers: json.Number, see args()
	if err := decoder.Decode(&config); err != nil {
		fail(err)
	}
	scenarios := map[string]func() (object, error){
		"plain": plainQueries, "transaction": transaction, "multi": multi, "infile": infile,
		"blob": blob, "prepared": prepared, "batch": batch, "wrong_password": wrongPassword,
	}
	run, ok := scenarios[os.Args[1]]
	if !ok {
		fail(fmt.Errorf("unknown scenario %s", os.Args[1]))
	}
	out, err := run()
	if err != nil {
		fail(err)
	}
	emit(out)
}

func emit(out object) {
	data, err := json.Marshal(out)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(data))
}

func fail(err error) {
	e := object{"message": err.Error(), "errno": nil, "sqlState": nil}
	var myErr *mysql.MySQLError
	if errors.As(err, &myErr) {
		e["errno"] = myErr.Number
		e["message"] = myErr.Message
	}
	emit(object{"error": e})
	os.Exit(1)
}

// open returns a pool for the configured server; extra are more DSN parameters.
func open(extra ...string) (*sql.DB, error) {
	params := append([]string{
		"timeout=10s", "readTimeout=30s", "writeTimeout=30s", "charset=utf8mb4",
		"collation=utf8mb4_general_ci", "parseTime=true",
	}, extra...)
	dsn := fmt.Sprintf("%s:%s@tcp(%s:%v)/%s?%s", str("user"), str("password"), str("host"),
		config["port"], str("database"), strings.Join(params, "&"))
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return nil, err
	}
	db.SetConnMaxLifetime(time.Minute)
	return db, db.Ping()
}

func str(key string) string {
	s, _ := config[key].(string)
	return s
}

func integer(key string) int {
	n, err := config[key].(json.Number).Int64()
	if err != nil {
		fail(err)
	}
	return int(n)
}

// --- scenarios -------------------------------------------------------------------------------

// plainQueries: literal types and a table, through COM_QUERY and through a prepared statement.
func plainQueries() (object, error) {
	text, err := open("interpolateParams=true")
	if err != nil {
		return nil, err
	}
	defer text.Close()
	binary, err := open()
	if err != nil {
		return nil, err
	}
	defer binary.Close()
	out := object{}
	if out["literal_query"], err = query(text, str("literal_sql")); err != nil {
		return nil, err
	}
	if out["literal_execute"], err = queryPrepared(binary, str("literal_sql")); err != nil {
		return nil, err
	}
	if _, err = text.Exec(str("ddl")); err != nil {
		return nil, err
	}
	for _, row := range config["rows"].([]interface{}) {
		if _, err = text.Exec(str("insert"), args(row)...); err != nil {
			return nil, err
		}
	}
	if out["table_query"], err = query(text, str("select")); err != nil {
		return nil, err
	}
	if out["table_execute"], err = queryPrepared(binary, str("select")); err != nil {
		return nil, err
	}
	if out["by_name"], err = query(binary, str("by_name"), config["emoji"]); err != nil {
		return nil, err
	}
	return out, nil
}

// transaction: a committed and a rolled-back transaction, watched from another connection.
func transaction() (object, error) {
	db, err := open()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	table := str("table")
	out := object{}
	count := func(q interface {
		QueryRow(string, ...interface{}) *sql.Row
	}) (n int64) {
		if err == nil {
			err = q.QueryRow("SELECT COUNT(*) FROM " + table).Scan(&n)
		}
		return n
	}
	if _, err = db.Exec("CREATE TABLE " + table + " (id INT PRIMARY KEY, v VARCHAR(20))"); err != nil {
		return nil, err
	}
	tx, err := db.Begin()
	if err != nil {
		return nil, err
	}
	if _, err = tx.Exec("INSERT INTO "+table+" VALUES (?, ?)", 1, "committed"); err != nil {
		return nil, err
	}
	out["reader_during_commit_tx"] = count(db)
	if err == nil {
		err = tx.Commit()
	}
	out["reader_after_commit"] = count(db)
	if err != nil {
		return nil, err
	}
	if tx, err = db.Begin(); err != nil {
		return nil, err
	}
	if _, err = tx.Exec("INSERT INTO " + table + " VALUES (2, 'rolled back')"); err != nil {
		return nil, err
	}
	out["writer_inside_rollback_tx"] = count(tx)
	out["reader_during_rollback_tx"] = count(db)
	if err == nil {
		err = tx.Rollback()
	}
	out["writer_after_rollback"] = count(db)
	if err != nil {
		return nil, err
	}
	out["reader_rows"], err = query(db, "SELECT id, v FROM "+table+" ORDER BY id")
	return out, err
}

// multi: one COM_QUERY with several statements (multiStatements=true).  database/sql shows
// only the results that have rows: the driver skips the others in NextResultSet.
func multi() (object, error) {
	db, err := open("multiStatements=true")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.Query(str("sql"))
	if err != nil {
		return nil, err
	}
	results := []interface{}{}
	for {
		got, err := readRows(rows)
		if err != nil {
			return nil, err
		}
		if len(got) > 0 {
			results = append(results, object{"rows": got})
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err = rows.Close(); err != nil {
		return nil, err
	}
	after, err := query(db, str("after"))
	return object{"results": results, "after": after}, err
}

// infile: LOAD DATA LOCAL INFILE over COM_QUERY (allowAllFiles lets the driver send any file).
func infile() (object, error) {
	db, err := open("allowAllFiles=true")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	if _, err = db.Exec(str("ddl")); err != nil {
		return nil, err
	}
	res, err := db.Exec(str("load"))
	if err != nil {
		return nil, err
	}
	affected, err := res.RowsAffected()
	if err != nil {
		return nil, err
	}
	countSum, err := query(db, "SELECT COUNT(*), SUM(qty) FROM "+str("table"))
	if err != nil {
		return nil, err
	}
	return object{"affectedRows": affected, "count_sum": countSum[0]}, nil
}

// blob: a random BLOB bigger than one packet; row 1 written with interpolated parameters
// (an escaped literal in a COM_QUERY), row 2 as a prepared statement's parameter (the driver
// sends it with COM_STMT_SEND_LONG_DATA); each read back with both protocols.
// maxAllowedPacket=0: the driver asks the server for its max_allowed_packet.
func blob() (object, error) {
	text, err := open("interpolateParams=true", "maxAllowedPacket=0")
	if err != nil {
		return nil, err
	}
	defer text.Close()
	binary, err := open("maxAllowedPacket=0")
	if err != nil {
		return nil, err
	}
	defer binary.Close()
	data := make([]byte, integer("size"))
	if _, err = rand.Read(data); err != nil {
		return nil, err
	}
	t := str("table")
	sum := sha256.Sum256(data)
	out := object{"length": len(data), "sha256": hex.EncodeToString(sum[:])}
	if _, err = text.Exec("CREATE TABLE " + t + " (id INT PRIMARY KEY, data LONGBLOB NOT NULL)"); err != nil {
		return nil, err
	}
	if _, err = text.Exec("INSERT INTO "+t+" VALUES (1, ?)", data); err != nil {
		return nil, err
	}
	if _, err = binary.Exec("INSERT INTO "+t+" VALUES (2, ?)", data); err != nil {
		return nil, err
	}
	for id := 1; id <= 2; id++ {
		for how, db := range map[string]*sql.DB{"query": text, "execute": binary} {
			var got []byte
			if err = db.QueryRow("SELECT data FROM "+t+" WHERE id = ?", id).Scan(&got); err != nil {
				return nil, err
			}
			out[fmt.Sprintf("%s_%d_length", how, id)] = len(got)
			out[fmt.Sprintf("%s_%d_equal", how, id)] = string(got) == string(data)
		}
	}
	var one int
	err = text.QueryRow("SELECT 1").Scan(&one)
	out["after"] = one
	return out, err
}

// prepared: one statement executed several times, another client served in between; the
// parameter count the server announced; NULL and utf8mb4 parameters.
func prepared() (object, error) {
	db, err := open()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	other, err := open()
	if err != nil {
		return nil, err
	}
	defer other.Close()
	t := str("table")
	if _, err = db.Exec(str("ddl")); err != nil {
		return nil, err
	}
	insert, err := db.Prepare(str("insert"))
	if err != nil {
		return nil, err
	}
	for _, row := range config["rows"].([]interface{}) {
		if _, err = insert.Exec(args(row)...); err != nil {
			return nil, err
		}
	}
	insert.Close()
	sel, err := db.Prepare(str("select_from"))
	if err != nil {
		return nil, err
	}
	executions := []interface{}{}
	for _, low := range []int{1, 3, 2} {
		rows, err := sel.Query(low)
		if err != nil {
			return nil, err
		}
		got, err := readRows(rows)
		if err != nil {
			return nil, err
		}
		var n int
		if err = other.QueryRow("SELECT COUNT(*) FROM " + t).Scan(&n); err != nil {
			return nil, err
		}
		executions = append(executions, object{"low": low, "rows": got, "other_count": n})
	}
	sel.Close()
	out := object{"executions": executions}
	// database/sql does not show NumInput(); ask the driver's statement itself.
	conn, err := db.Conn(context.Background())
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	explicitSQL := "SELECT ? AS a, ? AS b, ? AS c FROM DUAL"
	err = conn.Raw(func(dc interface{}) error {
		stmt, err := dc.(driver.ConnPrepareContext).PrepareContext(context.Background(), explicitSQL)
		if err != nil {
			return err
		}
		out["param_count"] = stmt.NumInput()
		return stmt.Close()
	})
	if err != nil {
		return nil, err
	}
	explicit := []interface{}{}
	for _, params := range [][]interface{}{{nil, config["emoji"], 7}, {"x", "y", 8}} {
		got, err := query(conn, explicitSQL, params...)
		if err != nil {
			return nil, err
		}
		explicit = append(explicit, got[0])
	}
	out["explicit"] = explicit
	var after int
	err = conn.QueryRowContext(context.Background(), "SELECT 2 AS after").Scan(&after)
	out["after"] = after
	return out, err
}

// batch: what a Go program does for many rows, database/sql having no batch API: a prepared
// statement executed per row inside a transaction, one multi-row INSERT with interpolated
// parameters, several statements in one Exec (multiStatements), and a transaction whose
// statement fails on a duplicate key, then rolled back.
func batch() (object, error) {
	db, err := open("multiStatements=true")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	interpolating, err := open("interpolateParams=true")
	if err != nil {
		return nil, err
	}
	defer interpolating.Close()
	t := str("table")
	n := integer("rows")
	out := object{}
	if _, err = db.Exec("CREATE TABLE " + t + " (id INT PRIMARY KEY, label VARCHAR(64) NOT NULL, qty INT NOT NULL)"); err != nil {
		return nil, err
	}
	tx, err := db.Begin()
	if err != nil {
		return nil, err
	}
	stmt, err := tx.Prepare("INSERT INTO " + t + " (id, label, qty) VALUES (?, ?, ?)")
	if err != nil {
		return nil, err
	}
	affected := int64(0)
	for i := 1; i <= n; i++ {
		res, err := stmt.Exec(i, fmt.Sprintf("label-%d-\u00e9\U0001F600", i), i*7919%1000)
		if err != nil {
			return nil, err
		}
		got, _ := res.RowsAffected()
		affected += got
	}
	stmt.Close()
	if err = tx.Commit(); err != nil {
		return nil, err
	}
	out["prepared_affected"] = affected
	values := []string{}
	params := []interface{}{}
	for i := n + 1; i <= 2*n; i++ {
		values = append(values, "(?, ?, ?)")
		params = append(params, i, fmt.Sprintf("label-%d", i), i*7919%1000)
	}
	res, err := interpolating.Exec("INSERT INTO "+t+" (id, label, qty) VALUES "+strings.Join(values, ", "), params...)
	if err != nil {
		return nil, err
	}
	out["multi_row_affected"], _ = res.RowsAffected()
	res, err = db.Exec("UPDATE " + t + " SET qty = qty + 1 WHERE id <= 3; DELETE FROM " + t +
		fmt.Sprintf(" WHERE id = %d; INSERT INTO %s VALUES (%d, 'again', 0)", 2*n, t, 2*n))
	if err != nil {
		return nil, err
	}
	out["multi_statement_affected"], _ = res.RowsAffected()
	if tx, err = db.Begin(); err != nil {
		return nil, err
	}
	_, err = tx.Exec("INSERT INTO "+t+" (id, label, qty) VALUES (?, 'dup', 0)", 2*n+1)
	if err == nil {
		_, err = tx.Exec("INSERT INTO "+t+" (id, label, qty) VALUES (?, 'dup', 0)", 1)
	}
	var myErr *mysql.MySQLError
	if errors.As(err, &myErr) {
		out["duplicate_error"] = myErr.Number
	} else if err != nil {
		return nil, err
	}
	if err = tx.Rollback(); err != nil {
		return nil, err
	}
	out["count_sum"], err = query(db, "SELECT COUNT(*), SUM(qty), SUM(label = 'dup') FROM "+t)
	return out, err
}

func wrongPassword() (object, error) {
	config["password"] = config["wrong_password"]
	db, err := open()
	if err != nil {
		return nil, err
	}
	db.Close()
	return object{"connected": true}, nil
}

// --- helpers ---------------------------------------------------------------------------------

type querier interface {
	QueryContext(context.Context, string, ...interface{}) (*sql.Rows, error)
}

func query(q querier, sql string, params ...interface{}) ([][]interface{}, error) {
	rows, err := q.QueryContext(context.Background(), sql, params...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return readRows(rows)
}

// queryPrepared forces the binary protocol for a statement without parameters.
func queryPrepared(db *sql.DB, sql string) ([][]interface{}, error) {
	stmt, err := db.Prepare(sql)
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	rows, err := stmt.Query()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return readRows(rows)
}

// readRows reads the current result set; each value in the JSON form drivers.py expects,
// chosen by the column's type as the driver reports it.
func readRows(rows *sql.Rows) ([][]interface{}, error) {
	types, err := rows.ColumnTypes()
	if err != nil {
		return nil, err
	}
	out := [][]interface{}{}
	for rows.Next() {
		values := make([]interface{}, len(types))
		ptrs := make([]interface{}, len(types))
		for i := range values {
			ptrs[i] = &values[i]
		}
		if err = rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		row := make([]interface{}, len(types))
		for i, v := range values {
			if row[i], err = jsonValue(v, types[i].DatabaseTypeName()); err != nil {
				return nil, err
			}
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

func jsonValue(v interface{}, typeName string) (interface{}, error) {
	switch x := v.(type) {
	case time.Time:
		return x.Format("2006-01-02 15:04:05"), nil
	case []byte:
		switch strings.TrimPrefix(typeName, "UNSIGNED ") {
		case "TINYINT", "SMALLINT", "MEDIUMINT", "INT", "BIGINT", "YEAR":
			return strconv.ParseInt(string(x), 10, 64)
		case "FLOAT", "DOUBLE":
			return strconv.ParseFloat(string(x), 64)
		}
		return string(x), nil
	}
	return v, nil
}

// args turns a JSON row into statement arguments: numbers as int64 or float64, as written.
func args(row interface{}) []interface{} {
	out := []interface{}{}
	for _, v := range row.([]interface{}) {
		if number, ok := v.(json.Number); ok {
			if i, err := number.Int64(); err == nil {
				v = i
			} else if v, err = number.Float64(); err != nil {
				fail(err)
			}
		}
		out = append(out, v)
	}
	return out
}
