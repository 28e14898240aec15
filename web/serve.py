"""Serves web/ on localhost for the demo page (python3 web/serve.py [PORT]); with
--result FILE, a POST to /result (the page's report, see main.js) is written to FILE, which
is how web/test.sh reads what headless Chromium computed."""
import argparse, http.server, os

p = argparse.ArgumentParser()
p.add_argument("port", nargs="?", type=int, default=8000)
p.add_argument("--result")
a = p.parse_args()
os.chdir(os.path.dirname(os.path.abspath(__file__)))


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm", ".js": "text/javascript"}

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/result" and a.result:
            with open(a.result + ".tmp", "wb") as f:
                f.write(body)
            os.replace(a.result + ".tmp", a.result)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


print(f"serving {os.getcwd()} on http://127.0.0.1:{a.port}/", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler).serve_forever()
