#!/usr/bin/env python3
"""A tiny HTTP server for demos and tests: answers every GET with the client address it saw."""
import http.server
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (self.client_address[0] + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
http.server.HTTPServer(("0.0.0.0", port), Handler).serve_forever()
