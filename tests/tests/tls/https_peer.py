"""An HTTPS backend for tests/tests/tls/upstream.rs (Python's ssl: OpenSSL), HTTP/1.1
with keep-alive. Each answer says which connection it came on and whether its TLS
session was resumed; `/close` closes the connection after answering.

  https_peer.py PORT CERT KEY"""
import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"port={self.client_address[1]} reused={self.connection.session_reused} sni={getattr(self.connection, 'sni', None)}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        if self.path == "/close":
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


port, cert, key = sys.argv[1:4]
srv = http.server.ThreadingHTTPServer(("0.0.0.0", int(port)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.sni_callback = lambda sock, name, _: setattr(sock, "sni", name)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
