"""A real gRPC server and client (grpcio) for tests/tests/tls/grpc.rs, with generic
handlers over raw bytes: no .proto, no protoc.

  grpc_peer.py server PORT [CERT KEY]          h2c, or h2 over TLS with CERT and KEY
  grpc_peer.py client HOST:PORT CA NAME        over TLS (ALPN h2), NAME as SNI and authority

The client prints one line per call: the unary answer, the streamed answers, and the
status code and details of a call the server fails."""
import sys
from concurrent import futures

import grpc

same = lambda b: b


def unary(req, ctx):
    return b"unary:" + req


def stream(req, ctx):
    for i in range(3):
        yield b"part%d:" % i + req


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode())


def server(port, cert=None, key=None):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, request_deserializer=same, response_serializer=same),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, request_deserializer=same, response_serializer=same),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, request_deserializer=same, response_serializer=same),
    }
    # `handlers=` rather than add_generic_rpc_handlers: Debian's grpcio (1.51) has only it.
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(grpc.method_handlers_generic_handler("xt.Echo", handlers),))
    if cert:
        creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
        s.add_secure_port(f"0.0.0.0:{port}", creds)
    else:
        s.add_insecure_port(f"0.0.0.0:{port}")
    s.start()
    print("listening", flush=True)
    s.wait_for_termination()


def client(target, ca, name):
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    options = [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]
    with grpc.secure_channel(target, creds, options=options) as ch:
        call = lambda kind, method: getattr(ch, kind)(f"/xt.Echo/{method}", request_serializer=same, response_deserializer=same)
        print(call("unary_unary", "Unary")(b"hello", timeout=10).decode())
        print(",".join(r.decode() for r in call("unary_stream", "Stream")(b"s", timeout=10)))
        try:
            call("unary_unary", "Fail")(b"x", timeout=10)
            print("no error")
        except grpc.RpcError as e:
            print(e.code().name, e.details())


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]](*sys.argv[2:])
