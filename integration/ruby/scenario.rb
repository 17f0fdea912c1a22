# One Ruby mysql2 scenario against pyproxy, for integration/test_drivers_ruby.py.
#
#   ruby scenario.rb SCENARIO '{"host": ..., "port": ..., "user": ..., "password": ..., ...}'
#
# Prints exactly one JSON object on its last stdout line: what the scenario observed, or
# {"error": {errno, sqlState, message}} (exit code 1) when something raised.  Values are made
# JSON-safe the way integration/drivers.py expects: DECIMAL as its text, DATETIME as
# "YYYY-MM-DD HH:MM:SS".
#
# The mysql2 gem wraps libmariadb: Client#query sends a COM_QUERY, Client#prepare a
# COM_STMT_PREPARE whose Statement#execute is a COM_STMT_EXECUTE.
require 'bigdecimal'
require 'digest'
require 'json'
require 'securerandom'
require 'mysql2'

CONFIG = JSON.parse(ARGV[1])

def connect(**extra)
  Mysql2::Client.new(
    host: CONFIG['host'], port: CONFIG['port'], username: CONFIG['user'],
    password: CONFIG['password'], database: CONFIG['database'], encoding: 'utf8mb4',
    connect_timeout: 10, read_timeout: 30, write_timeout: 30,
    database_timezone: :utc, application_timezone: :utc, **extra
  )
end

def plain(value)
  case value
  when BigDecimal then value.to_s('F')
  when Time then value.strftime('%Y-%m-%d %H:%M:%S')
  when Array then value.map { |v| plain(v) }
  else value
  end
end

def rows(result)
  result.nil? ? [] : result.to_a.map { |row| plain(row) }
end

def query(client, sql)
  rows(client.query(sql, as: :array))
end

def execute(client, sql, *params)
  stmt = client.prepare(sql)
  rows(stmt.execute(*params, as: :array))
ensure
  stmt&.close
end

def scalar(client, sql)
  client.query(sql, as: :array).first.first
end

# Every result of a multi-statement COM_QUERY: {"rows" => [...]} or {"affectedRows" => n}.
def multi(client, sql)
  results = []
  result = client.query(sql, as: :array)
  loop do
    results << (result ? { 'rows' => rows(result) } : { 'affectedRows' => client.affected_rows })
    break unless client.next_result

    result = client.store_result
  end
  results
end

SCENARIOS = {
  # Literal types and a table, through the text and the binary protocol.
  'plain' => lambda do |c|
    client = connect
    out = {
      'literal_query' => query(client, c['literal_sql']),
      'literal_execute' => execute(client, c['literal_sql'])
    }
    client.query(c['ddl'])
    insert = client.prepare(c['insert'])
    c['rows'].each { |row| insert.execute(*row) }
    insert.close
    out['table_query'] = query(client, c['select'])
    out['table_execute'] = execute(client, c['select'])
    out['by_name'] = execute(client, c['by_name'], c['emoji'])
    out
  end,

  # A committed and a rolled-back transaction, watched from a second connection.
  'transaction' => lambda do |c|
    writer = connect
    reader = connect
    t = c['table']
    count = ->(client) { scalar(client, "SELECT COUNT(*) FROM #{t}") }
    out = {}
    writer.query("CREATE TABLE #{t} (id INT PRIMARY KEY, v VARCHAR(20))")
    writer.query('START TRANSACTION')
    execute(writer, "INSERT INTO #{t} VALUES (?, ?)", 1, 'committed')
    out['reader_during_commit_tx'] = count.call(reader)
    writer.query('COMMIT')
    out['reader_after_commit'] = count.call(reader)
    writer.query('START TRANSACTION')
    writer.query("INSERT INTO #{t} VALUES (2, 'rolled back')")
    out['writer_inside_rollback_tx'] = count.call(writer)
    out['reader_during_rollback_tx'] = count.call(reader)
    writer.query('ROLLBACK')
    out['writer_after_rollback'] = count.call(writer)
    out['reader_rows'] = query(reader, "SELECT id, v FROM #{t} ORDER BY id")
    out
  end,

  'multi' => lambda do |c|
    client = connect(flags: Mysql2::Client::MULTI_STATEMENTS)
    { 'results' => multi(client, c['sql']), 'after' => query(client, c['after']) }
  end,

  # LOAD DATA LOCAL INFILE in a COM_QUERY, or with "prepared" as a prepared statement.
  'infile' => lambda do |c|
    client = connect(local_infile: true)
    client.query(c['ddl'])
    if c['prepared']
      stmt = client.prepare(c['load'])
      stmt.execute
      affected = stmt.affected_rows
    else
      client.query(c['load'])
      affected = client.affected_rows
    end
    { 'affectedRows' => affected,
      'count_sum' => query(client, "SELECT COUNT(*), SUM(qty) FROM #{c['table']}").first }
  end,

  # A random BLOB bigger than one packet: row 1 as a hex literal in a COM_QUERY, row 2 a
  # prepared statement's parameter; each read back through both protocols.  libmariadb's own
  # max_allowed_packet comes from the option file given as "options_file".
  'blob' => lambda do |c|
    client = connect(default_file: c['options_file'])
    t = c['table']
    data = SecureRandom.random_bytes(c['size'])
    out = { 'length' => data.bytesize, 'sha256' => Digest::SHA256.hexdigest(data) }
    client.query("CREATE TABLE #{t} (id INT PRIMARY KEY, data LONGBLOB NOT NULL)")
    client.query("INSERT INTO #{t} VALUES (1, X'#{data.unpack1('H*')}')")
    stmt = client.prepare("INSERT INTO #{t} VALUES (?, ?)")
    stmt.execute(2, data)
    stmt.close
    [1, 2].each do |id|
      { 'query' => client.query("SELECT data FROM #{t} WHERE id = #{id}", as: :array).first.first,
        'execute' => client.prepare("SELECT data FROM #{t} WHERE id = ?").execute(id, as: :array).first.first }
        .each do |how, got|
          out["#{how}_#{id}_length"] = got.bytesize
          out["#{how}_#{id}_equal"] = got.b == data
        end
    end
    out['after'] = scalar(client, 'SELECT 1')
    out
  end,

  # Server-side prepared statements: several executions, another client in between.
  'prepared' => lambda do |c|
    client = connect
    other = connect
    t = c['table']
    client.query(c['ddl'])
    insert = client.prepare(c['insert'])
    c['rows'].each { |row| insert.execute(*row) }
    insert.close
    select = client.prepare(c['select_from'])
    executions = [1, 3, 2].map do |low|
      { 'low' => low, 'rows' => rows(select.execute(low, as: :array)),
        'other_count' => scalar(other, "SELECT COUNT(*) FROM #{t}") }
    end
    select.close
    explicit = client.prepare('SELECT ? AS a, ? AS b, ? AS c FROM DUAL')
    out = { 'executions' => executions, 'param_count' => explicit.param_count }
    out['explicit'] = [[nil, c['emoji'], 7], ['x', 'y', 8]].map do |params|
      rows(explicit.execute(*params, as: :array)).first
    end
    explicit.close
    out['after'] = scalar(client, 'SELECT 2 AS after')
    out
  end,

  # mysql2 has no batch call: a prepared INSERT per row in a transaction, several statements
  # in one multi-statement query, a duplicate key in a transaction rolled back.
  'batch' => lambda do |c|
    client = connect(flags: Mysql2::Client::MULTI_STATEMENTS)
    t = c['table']
    n = c['rows']
    out = {}
    client.query("CREATE TABLE #{t} (id INT PRIMARY KEY, label VARCHAR(64) NOT NULL, qty INT NOT NULL)")
    client.query('START TRANSACTION')
    insert = client.prepare("INSERT INTO #{t} (id, label, qty) VALUES (?, ?, ?)")
    out['prepared_affected'] = (1..n).sum do |i|
      insert.execute(i, "label-#{i}-\u00e9\u{1F600}", i * 7919 % 1000)
      insert.affected_rows
    end
    client.query('COMMIT')
    out['multi_statement'] = multi(client, "UPDATE #{t} SET qty = qty + 1 WHERE id <= 3; " \
                                           "DELETE FROM #{t} WHERE id = #{n}; INSERT INTO #{t} VALUES (#{n}, 'again', 0)")
    client.query('START TRANSACTION')
    begin
      insert.execute(n + 1, 'dup', 0)
      insert.execute(1, 'dup', 0)
    rescue Mysql2::Error => e
      out['duplicate_error'] = e.error_number
    end
    client.query('ROLLBACK')
    out['count_sum'] = query(client, "SELECT COUNT(*), SUM(qty), SUM(label = 'dup') FROM #{t}").first
    out
  end,

  'wrong_password' => lambda do |c|
    CONFIG['password'] = c['wrong_password']
    connect.close
    { 'connected' => true }
  end
}.freeze

def emit(out)
  puts JSON.generate(out, ascii_only: true)
end

begin
  scenario = SCENARIOS.fetch(ARGV[0]) { raise ArgumentError, "unknown scenario #{ARGV[0]}" }
  emit(scenario.call(CONFIG))
rescue Mysql2::Error => e
  emit('error' => { 'errno' => e.error_number, 'sqlState' => e.sql_state, 'message' => e.message })
  exit 1
rescue StandardError => e
  emit('error' => { 'errno' => nil, 'sqlState' => nil, 'message' => "#{e.class}: #{e.message}" })
  exit 1
end
