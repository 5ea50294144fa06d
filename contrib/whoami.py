#!/usr/bin/env python3
"""A tiny HTTP server for demos and tests: answers every GET with the client address it saw.

It listens at once and never resolves names: http.server.HTTPServer looks up its own fully
qualified name (a reverse DNS query) between bind and listen, which inside a pod namespace with
no reachable nameserver blocks for the resolver's timeout (5 s per server and attempt) while
connections are refused.
"""
import http.server
import socketserver
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


class Server(socketserver.TCPServer):
    """HTTPServer without its getfqdn() in server_bind."""

    allow_reuse_address = True


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
Server(("0.0.0.0", port), Handler).serve_forever()
