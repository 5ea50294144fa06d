#!/usr/bin/env python3
"""A tiny HTTP server for demos and tests: answers every GET with the client address it saw.

It listens on IPv4 and IPv6 at once; an IPv4 client is shown as its IPv4 address (not as the
IPv4-mapped IPv6 address the dual-stack socket reports).

It listens at once and never resolves names: http.server.HTTPServer looks up its own fully
qualified name (a reverse DNS query) between bind and listen, which inside a pod namespace with
no reachable nameserver blocks for the resolver's timeout (5 s per server and attempt) while
connections are refused.
"""
import http.server
import socket
import socketserver
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        client = self.client_address[0].removeprefix("::ffff:")
        body = (client + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.TCPServer):
    """HTTPServer without its getfqdn() in server_bind."""

    allow_reuse_address = True
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
Server(("::", port), Handler).serve_forever()
