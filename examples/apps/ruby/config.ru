# A Rack app for puma under hostel (docs/apps.md).
$stdout.sync = true # stdout is a file: without this, `hostel logs` sees lines late

run lambda { |env|
  next [200, { "content-type" => "text/plain" }, ["ok\n"]] if env["PATH_INFO"] == "/healthz"
  puts "ruby: GET #{env['PATH_INFO']}"
  [200, { "content-type" => "text/plain" }, ["hello from puma\n"]]
}
