// One MariaDB Connector/J (JDBC) scenario against pyproxy, for integration/test_drivers_java.py.
//
//   java -cp mariadb-java-client.jar:BUILD Scenario SCENARIO '{"host": ..., "port": ..., ...}'
//
// Prints exactly one JSON object on its last stdout line: what the scenario observed, or
// {"error": {errno, sqlState, message}} (exit code 1) when something threw.  Values are made
// JSON-safe the way integration/drivers.py expects: DECIMAL as its plain text, DATETIME as
// "YYYY-MM-DD HH:MM:SS", byte arrays as {buffer_length, sha256}.
//
// "binary" connections use server-side prepared statements (useServerPrepStmts=true: COM_STMT_*);
// the others let Connector/J interpolate parameters into a COM_QUERY, its default.

import java.math.BigDecimal;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.time.LocalDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

public final class Scenario {
    private static Map<String, Object> config;
    private static final DateTimeFormatter DATETIME = DateTimeFormatter.ofPattern("yyyy-MM-dd HH:mm:ss");

    private Scenario() {}

    public static void main(String[] args) throws Exception {
        config = asMap(new JsonReader(args[1]).value());
        Map<String, Object> out;
        int code = 0;
        try {
            out = run(args[0]);
        } catch (SQLException e) {
            out = new LinkedHashMap<>();
            Map<String, Object> error = new LinkedHashMap<>();
            error.put("errno", e.getErrorCode());
            error.put("sqlState", e.getSQLState());
            error.put("message", e.getMessage());
            error.put("class", e.getClass().getName());
            if (e instanceof BatchUpdateException) {
                error.put("update_counts", counts(((BatchUpdateException) e).getUpdateCounts()));
            }
            out.put("error", error);
            code = 1;
        }
        System.out.println(toJson(out));
        System.exit(code);
    }

    private static Map<String, Object> run(String scenario) throws Exception {
        switch (scenario) {
            case "plain": return plain();
            case "transaction": return transaction();
            case "multi": return multi();
            case "infile": return infile();
            case "blob": return blob();
            case "prepared": return prepared();
            case "batch": return batch();
            case "wrong_password": return wrongPassword();
            case "metadata": return metadata();
            default: throw new IllegalArgumentException("unknown scenario " + scenario);
        }
    }

    // --- connections ------------------------------------------------------------------------

    private static Connection connect(boolean binary, Map<String, Object> extra) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", str("user"));
        props.setProperty("password", str("password"));
        props.setProperty("connectTimeout", "10000");
        props.setProperty("socketTimeout", "30000");
        props.setProperty("useServerPrepStmts", Boolean.toString(binary));
        for (Map.Entry<String, Object> e : asMap(config.getOrDefault("properties", new LinkedHashMap<>())).entrySet()) {
            props.setProperty(e.getKey(), String.valueOf(e.getValue()));
        }
        for (Map.Entry<String, Object> e : extra.entrySet()) {
            props.setProperty(e.getKey(), String.valueOf(e.getValue()));
        }
        String url = "jdbc:mariadb://" + str("host") + ":" + config.get("port") + "/" + str("database");
        return DriverManager.getConnection(url, props);
    }

    private static Connection connect(boolean binary) throws SQLException {
        return connect(binary, new LinkedHashMap<>());
    }

    private static Map<String, Object> props(String... keyValues) {
        Map<String, Object> out = new LinkedHashMap<>();
        for (int i = 0; i < keyValues.length; i += 2) {
            out.put(keyValues[i], keyValues[i + 1]);
        }
        return out;
    }

    // --- scenarios ----------------------------------------------------------------------------

    /** Literal types and a table, through Statement (text protocol) and server-side
     * PreparedStatement (binary protocol). */
    private static Map<String, Object> plain() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection text = connect(false); Connection binary = connect(true)) {
            try (Statement st = text.createStatement()) {
                out.put("literal_query", rows(st.executeQuery(str("literal_sql"))));
                st.execute(str("ddl"));
            }
            out.put("literal_execute", queryPrepared(binary, str("literal_sql")));
            try (PreparedStatement ps = text.prepareStatement(str("insert"))) {
                for (Object row : list("rows")) {
                    bind(ps, asList(row));
                    ps.executeUpdate();
                }
            }
            try (Statement st = text.createStatement()) {
                out.put("table_query", rows(st.executeQuery(str("select"))));
            }
            out.put("table_execute", queryPrepared(binary, str("select")));
            out.put("by_name", queryPrepared(binary, str("by_name"), config.get("emoji")));
        }
        return out;
    }

    /** A committed and a rolled-back transaction, watched from a second connection. */
    private static Map<String, Object> transaction() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        String table = str("table");
        try (Connection writer = connect(true); Connection reader = connect(false)) {
            try (Statement st = writer.createStatement()) {
                st.execute("CREATE TABLE " + table + " (id INT PRIMARY KEY, v VARCHAR(20))");
            }
            writer.setAutoCommit(false);
            try (PreparedStatement ps = writer.prepareStatement("INSERT INTO " + table + " VALUES (?, ?)")) {
                bind(ps, Arrays.asList(1L, "committed"));
                ps.executeUpdate();
            }
            out.put("reader_during_commit_tx", count(reader, table));
            writer.commit();
            out.put("reader_after_commit", count(reader, table));
            try (Statement st = writer.createStatement()) {
                st.executeUpdate("INSERT INTO " + table + " VALUES (2, 'rolled back')");
            }
            out.put("writer_inside_rollback_tx", count(writer, table));
            out.put("reader_during_rollback_tx", count(reader, table));
            writer.rollback();
            out.put("writer_after_rollback", count(writer, table));
            writer.setAutoCommit(true);
            try (Statement st = reader.createStatement()) {
                out.put("reader_rows", rows(st.executeQuery("SELECT id, v FROM " + table + " ORDER BY id")));
            }
        }
        return out;
    }

    /** One COM_QUERY with several statements (allowMultiQueries): every result in order. */
    private static Map<String, Object> multi() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect(false, props("allowMultiQueries", "true"));
             Statement st = conn.createStatement()) {
            List<Object> results = new ArrayList<>();
            boolean isResultSet = st.execute(str("sql"));
            while (true) {
                if (isResultSet) {
                    results.add(one("rows", rows(st.getResultSet())));
                } else {
                    int count = st.getUpdateCount();
                    if (count == -1) {
                        break;
                    }
                    results.add(one("affectedRows", count));
                }
                isResultSet = st.getMoreResults();
            }
            out.put("results", results);
            out.put("after", rows(st.executeQuery(str("after"))));
        }
        return out;
    }

    /** LOAD DATA LOCAL INFILE through a Statement (COM_QUERY).  Connector/J never prepares it
     * on the server, even with useServerPrepStmts. */
    private static Map<String, Object> infile() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect(false, props("allowLocalInfile", "true"));
             Statement st = conn.createStatement()) {
            st.execute(str("ddl"));
            out.put("affectedRows", st.executeUpdate(str("load")));
            out.put("count_sum", rows(st.executeQuery("SELECT COUNT(*), SUM(qty) FROM " + str("table"))).get(0));
        }
        return out;
    }

    /** A random BLOB bigger than one packet: row 1 written through the text protocol (escaped
     * into the COM_QUERY), row 2 through the binary one; each read back both ways. */
    private static Map<String, Object> blob() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        String t = str("table");
        byte[] data = new byte[((Number) config.get("size")).intValue()];
        new SecureRandom().nextBytes(data);
        out.put("length", data.length);
        out.put("sha256", sha256(data));
        // Connector/J reads the server's max_allowed_packet when it connects.
        try (Connection text = connect(false); Connection binary = connect(true)) {
            try (Statement st = text.createStatement()) {
                st.execute("CREATE TABLE " + t + " (id INT PRIMARY KEY, data LONGBLOB NOT NULL)");
            }
            Connection[] writers = {text, binary};
            for (int id = 1; id <= 2; id++) {
                try (PreparedStatement ps = writers[id - 1].prepareStatement("INSERT INTO " + t + " VALUES (?, ?)")) {
                    ps.setInt(1, id);
                    ps.setBytes(2, data);
                    ps.executeUpdate();
                }
            }
            for (int id = 1; id <= 2; id++) {
                Connection[] readers = {text, binary};
                String[] hows = {"query", "execute"};
                for (int i = 0; i < 2; i++) {
                    try (PreparedStatement ps = readers[i].prepareStatement("SELECT data FROM " + t + " WHERE id = ?")) {
                        ps.setInt(1, id);
                        try (ResultSet rs = ps.executeQuery()) {
                            rs.next();
                            byte[] got = rs.getBytes(1);
                            out.put(hows[i] + "_" + id + "_length", got.length);
                            out.put(hows[i] + "_" + id + "_equal", Arrays.equals(got, data));
                        }
                    }
                }
            }
            try (Statement st = text.createStatement()) {
                out.put("after", rows(st.executeQuery("SELECT 1")).get(0).get(0));
            }
        }
        return out;
    }

    /** Server-side prepared statements: several executions of one, another client served in
     * between, parameter metadata, NULL and utf8mb4 parameters. */
    private static Map<String, Object> prepared() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        String t = str("table");
        try (Connection conn = connect(true); Connection other = connect(false)) {
            try (Statement st = conn.createStatement()) {
                st.execute(str("ddl"));
            }
            try (PreparedStatement ps = conn.prepareStatement(str("insert"))) {
                for (Object row : list("rows")) {
                    bind(ps, asList(row));
                    ps.executeUpdate();
                }
            }
            List<Object> executions = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement(str("select_from"))) {
                for (long low : new long[] {1, 3, 2}) {
                    Map<String, Object> e = new LinkedHashMap<>();
                    ps.setLong(1, low);
                    try (ResultSet rs = ps.executeQuery()) {
                        e.put("low", low);
                        e.put("rows", rows(rs));
                    }
                    e.put("other_count", count(other, t));
                    executions.add(e);
                }
            }
            out.put("executions", executions);
            try (PreparedStatement ps = conn.prepareStatement("SELECT ? AS a, ? AS b, ? AS c FROM DUAL")) {
                out.put("param_count", ps.getParameterMetaData().getParameterCount());
                List<Object> explicit = new ArrayList<>();
                bind(ps, Arrays.asList(null, config.get("emoji"), 7L));
                try (ResultSet rs = ps.executeQuery()) {
                    explicit.add(rows(rs).get(0));
                }
                bind(ps, Arrays.asList("x", "y", 8L));
                try (ResultSet rs = ps.executeQuery()) {
                    explicit.add(rows(rs).get(0));
                }
                out.put("explicit", explicit);
            }
            try (Statement st = conn.createStatement()) {
                out.put("after", rows(st.executeQuery("SELECT 2 AS after")).get(0).get(0));
            }
        }
        return out;
    }

    /** JDBC batches once per entry of "modes" ({name: {"properties": {...}, "binary": bool}}),
     * each in its own table "table"_N, in one JVM: out[name] is what that mode saw. */
    private static Map<String, Object> batch() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        int index = 0;
        for (Map.Entry<String, Object> mode : asMap(config.get("modes")).entrySet()) {
            Map<String, Object> settings = asMap(mode.getValue());
            String table = str("table") + "_" + (++index);
            try (Connection conn = connect(Boolean.TRUE.equals(settings.get("binary")),
                                           asMap(settings.get("properties")))) {
                out.put(mode.getKey(), batchOn(conn, table));
            }
        }
        return out;
    }

    /** PreparedStatement.addBatch()/executeBatch(): "rows" INSERTs, an UPDATE batch, a
     * Statement batch of plain SQL, then an INSERT batch whose second row repeats a key. */
    private static Map<String, Object> batchOn(Connection conn, String t) throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        int n = ((Number) config.get("rows")).intValue();
        try (Statement st = conn.createStatement()) {
            st.execute("CREATE TABLE " + t + " (id INT PRIMARY KEY, label VARCHAR(64) NOT NULL, qty INT NOT NULL)");
        }
        String insert = "INSERT INTO " + t + " (id, label, qty) VALUES (?, ?, ?)";
        try (PreparedStatement ps = conn.prepareStatement(insert)) {
            out.put("statement_class", ps.getClass().getSimpleName());
            for (int i = 1; i <= n; i++) {
                bind(ps, Arrays.asList((long) i, "label-" + i + "-\u00e9\uD83D\uDE00", (long) (i * 7919 % 1000)));
                ps.addBatch();
            }
            out.put("insert_counts", counts(ps.executeBatch()));
        }
        try (PreparedStatement ps = conn.prepareStatement("UPDATE " + t + " SET qty = qty + ? WHERE id <= ?")) {
            for (long i = 1; i <= 3; i++) {
                bind(ps, Arrays.asList(1L, i));
                ps.addBatch();
            }
            out.put("update_counts", counts(ps.executeBatch()));
        }
        try (Statement st = conn.createStatement()) {
            st.addBatch("UPDATE " + t + " SET qty = qty - 1 WHERE id = 1");
            st.addBatch("DELETE FROM " + t + " WHERE id = " + n);
            st.addBatch("INSERT INTO " + t + " VALUES (" + n + ", 'again', 0)");
            out.put("statement_counts", counts(st.executeBatch()));
            out.put("count_sum", rows(st.executeQuery("SELECT COUNT(*), SUM(qty) FROM " + t)).get(0));
        }
        try (PreparedStatement ps = conn.prepareStatement(insert)) {
            for (long id : new long[] {n + 1, 1, n + 2}) {
                bind(ps, Arrays.asList(id, "dup", 0L));
                ps.addBatch();
            }
            try {
                out.put("duplicate_counts", counts(ps.executeBatch()));
            } catch (BatchUpdateException e) {
                out.put("duplicate_counts", counts(e.getUpdateCounts()));
                out.put("duplicate_error", e.getErrorCode());
            }
        }
        try (Statement st = conn.createStatement()) {
            out.put("duplicate_rows", rows(st.executeQuery("SELECT id FROM " + t + " WHERE label = 'dup' ORDER BY id")));
        }
        return out;
    }

    /** What ResultSetMetaData says of each column of "select" (a JSON and a geometry column
     * among them), over the text and the binary protocol: MariaDB's extended type information
     * (MARIADB_CLIENT_EXTENDED_METADATA) shows in the type names. */
    private static Map<String, Object> metadata() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        for (boolean binary : new boolean[] {false, true}) {
            try (Connection conn = connect(binary);
                 PreparedStatement ps = conn.prepareStatement(str("select"));
                 ResultSet rs = ps.executeQuery()) {
                ResultSetMetaData md = rs.getMetaData();
                List<Object> columns = new ArrayList<>();
                for (int i = 1; i <= md.getColumnCount(); i++) {
                    columns.add(Arrays.asList(md.getColumnLabel(i), md.getColumnTypeName(i),
                                              md.getColumnType(i), md.getColumnClassName(i)));
                }
                out.put(binary ? "binary" : "text", columns);
            }
        }
        return out;
    }

    private static Map<String, Object> wrongPassword() throws Exception {
        config.put("password", config.get("wrong_password"));
        try (Connection conn = connect(false)) {
            return one("connected", conn.isValid(5));
        }
    }

    // --- helpers ------------------------------------------------------------------------------

    private static List<List<Object>> queryPrepared(Connection conn, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            bind(ps, Arrays.asList(params));
            try (ResultSet rs = ps.executeQuery()) {
                return rows(rs);
            }
        }
    }

    private static long count(Connection conn, String table) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT COUNT(*) FROM " + table)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    private static void bind(PreparedStatement ps, List<Object> values) throws SQLException {
        for (int i = 0; i < values.size(); i++) {
            Object v = values.get(i);
            if (v == null) {
                ps.setNull(i + 1, Types.VARCHAR);
            } else if (v instanceof Long) {
                ps.setLong(i + 1, (Long) v);
            } else if (v instanceof Double) {
                ps.setDouble(i + 1, (Double) v);
            } else {
                ps.setString(i + 1, (String) v);
            }
        }
    }

    private static List<List<Object>> rows(ResultSet rs) throws SQLException {
        List<List<Object>> out = new ArrayList<>();
        ResultSetMetaData md = rs.getMetaData();
        while (rs.next()) {
            List<Object> row = new ArrayList<>();
            for (int i = 1; i <= md.getColumnCount(); i++) {
                row.add(plain(rs.getObject(i)));
            }
            out.add(row);
        }
        rs.close();
        return out;
    }

    /** The JSON form integration/drivers.py compares. */
    private static Object plain(Object v) {
        if (v instanceof BigDecimal) {
            return ((BigDecimal) v).toPlainString();
        }
        if (v instanceof Timestamp) {
            return ((Timestamp) v).toLocalDateTime().format(DATETIME);
        }
        if (v instanceof LocalDateTime) {
            return ((LocalDateTime) v).format(DATETIME);
        }
        if (v instanceof byte[]) {
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("buffer_length", ((byte[]) v).length);
            out.put("sha256", sha256((byte[]) v));
            return out;
        }
        if (v instanceof Integer || v instanceof Short || v instanceof Byte) {
            return ((Number) v).longValue();
        }
        return v;
    }

    private static List<Object> counts(int[] counts) {
        List<Object> out = new ArrayList<>();
        for (int c : counts) {
            out.add(c);
        }
        return out;
    }

    private static Map<String, Object> one(String key, Object value) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put(key, value);
        return out;
    }

    private static String sha256(byte[] data) {
        try {
            StringBuilder sb = new StringBuilder();
            for (byte b : MessageDigest.getInstance("SHA-256").digest(data)) {
                sb.append(String.format("%02x", b));
            }
            return sb.toString();
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    private static String str(String key) {
        return (String) config.get(key);
    }

    private static List<Object> list(String key) {
        return asList(config.get(key));
    }

    @SuppressWarnings("unchecked")
    private static List<Object> asList(Object value) {
        return (List<Object>) value;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> asMap(Object value) {
        return (Map<String, Object>) value;
    }

    // --- JSON: just enough for the scenario's config and output -------------------------------

    static String toJson(Object v) {
        StringBuilder sb = new StringBuilder();
        writeJson(sb, v);
        return sb.toString();
    }

    private static void writeJson(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof String) {
            sb.append('"');
            for (char ch : ((String) v).toCharArray()) {
                if (ch == '"' || ch == '\\') {
                    sb.append('\\').append(ch);
                } else if (ch < 0x20 || ch > 0x7e) {
                    // ASCII only: stdout's encoding then does not matter.
                    sb.append(String.format("\\u%04x", (int) ch));
                } else {
                    sb.append(ch);
                }
            }
            sb.append('"');
        } else if (v instanceof Number || v instanceof Boolean) {
            sb.append(v);
        } else if (v instanceof Map) {
            sb.append('{');
            String sep = "";
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                sb.append(sep);
                writeJson(sb, String.valueOf(e.getKey()));
                sb.append(':');
                writeJson(sb, e.getValue());
                sep = ",";
            }
            sb.append('}');
        } else if (v instanceof List) {
            sb.append('[');
            String sep = "";
            for (Object item : (List<?>) v) {
                sb.append(sep);
                writeJson(sb, item);
                sep = ",";
            }
            sb.append(']');
        } else {
            writeJson(sb, v.toString());
        }
    }

    /** Integers become Long, other numbers Double. */
    static final class JsonReader {
        private final String s;
        private int i;

        JsonReader(String s) {
            this.s = s;
        }

        Object value() {
            skip();
            char ch = s.charAt(i);
            if (ch == '{') {
                Map<String, Object> out = new LinkedHashMap<>();
                i++;
                skip();
                if (s.charAt(i) == '}') {
                    i++;
                    return out;
                }
                while (true) {
                    skip();
                    String key = string();
                    skip();
                    expect(':');
                    out.put(key, value());
                    skip();
                    if (s.charAt(i++) == '}') {
                        return out;
                    }
                }
            }
            if (ch == '[') {
                List<Object> out = new ArrayList<>();
                i++;
                skip();
                if (s.charAt(i) == ']') {
                    i++;
                    return out;
                }
                while (true) {
                    out.add(value());
                    skip();
                    if (s.charAt(i++) == ']') {
                        return out;
                    }
                }
            }
            if (ch == '"') {
                return string();
            }
            if (s.startsWith("null", i)) {
                i += 4;
                return null;
            }
            if (s.startsWith("true", i)) {
                i += 4;
                return Boolean.TRUE;
            }
            if (s.startsWith("false", i)) {
                i += 5;
                return Boolean.FALSE;
            }
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
            String number = s.substring(start, i);
            if (number.matches("-?\\d+")) {
                return Long.parseLong(number);
            }
            return Double.parseDouble(number);
        }

        private String string() {
            expect('"');
            StringBuilder sb = new StringBuilder();
            while (true) {
                char ch = s.charAt(i++);
                if (ch == '"') {
                    return sb.toString();
                }
                if (ch != '\\') {
                    sb.append(ch);
                    continue;
                }
                char esc = s.charAt(i++);
                switch (esc) {
                    case 'n': sb.append('\n'); break;
                    case 't': sb.append('\t'); break;
                    case 'r': sb.append('\r'); break;
                    case 'b': sb.append('\b'); break;
                    case 'f': sb.append('\f'); break;
                    case 'u':
                        sb.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        i += 4;
                        break;
                    default: sb.append(esc);
                }
            }
        }

        private void expect(char ch) {
            if (s.charAt(i) != ch) {
                throw new IllegalArgumentException("JSON: expected " + ch + " at " + i);
            }
            i++;
        }

        private void skip() {
            while (i < s.length() && Character.isWhitespace(s.charAt(i))) {
                i++;
            }
        }
    }
}
