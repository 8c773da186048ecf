// A Node app under hostel (docs/apps.md): it listens where hostel says.
const http = require("http");

const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.end("ok\n");
    return;
  }
  console.log("node: GET", req.url);
  res.end("hello from node\n");
});
// HOST is 127.0.0.1: "localhost" may resolve to ::1, where hostel does not look.
server.listen(Number(process.env.PORT), process.env.HOST);
// hostel stops a version with SIGTERM: close, let requests in flight finish.
process.on("SIGTERM", () => server.close(() => process.exit(0)));
